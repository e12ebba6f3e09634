"""Run-directory rules: where a resume finds its checkpoint, and how a failed run is marked."""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ilora.checkpoints import read_checkpoint, run_config_of
from ilora.cli.common import write_json
from ilora.errors import CheckpointError, ConfigError, IloraError

# What a run writes into its directory; finding any of them there means the directory belongs to another run.
RUN_FILES = ("status.json", "metrics.json", "config.yaml", "checkpoints", "predictions.json")
# Config keys that decide the shapes and meaning of the trainable tensors; a checkpoint must agree on all of them.
# Where a backbone lives (path, cache_dir) differs between machines; its tensors' fit is checked on load.
# model-defining sections compared key by key (minus the keys listed, which do not change what the weights mean);
# adapter.alpha and adapter.scaling rescale the adapter, so they must match
FIT_SECTIONS = {"backbone": ("path", "cache_dir", "device", "dtype"), "adapter": ("dropout",),
                "encoder": ("train",), "gate": ()}
# what a resumed run must share with the run it continues to replay it: the dropout masks (seed, p), and the
# micro-batch layout the resume offset and the accumulation windows assume
RESUME_KEYS = ("seed", "adapter.dropout", "data.batch_size", "trainer.accumulate_grad_batches", "trainer.devices",
               "trainer.num_nodes")


class RunDirInUse(ConfigError):
    """The run directory already holds another run's files (which must stay untouched)."""


def unfinished_own_run(cfg: DictConfig, out_dir: str | Path) -> bool:
    """Does `out_dir` already hold this very run, unfinished?

    A job that a cluster requeued after a timeout or preemption (submitit's checkpointing, SLURM `--requeue`), or a
    multirun launched again over the same sweep directory, re-enters its own directory with its own config. When
    the directory's `config.yaml` is this config (the resume source aside) and its status is neither completed nor
    failed, the run continues in place, from its own `checkpoints/last.ckpt` when one was written; any other
    occupied directory is refused by `claim_run_dir`, as before.
    """
    import yaml

    out_dir = Path(out_dir)
    saved = out_dir / "config.yaml"
    if not saved.is_file():
        return False
    try:
        status = json.loads((out_dir / "status.json").read_text()).get("status")
    except FileNotFoundError:
        status = None
    except (OSError, ValueError, AttributeError):
        return False
    if status not in (None, "interrupted"):
        return False
    try:
        theirs = yaml.safe_load(saved.read_text())
    except (OSError, yaml.YAMLError):
        return False
    ours = OmegaConf.to_container(cfg, resolve=True)
    for config in (theirs, ours):
        if isinstance(config, dict):
            config.pop("ckpt_path", None)
    return theirs == ours


def claim_run_dir(out_dir: str | Path) -> None:
    """Refuse a directory that already holds a run: runs never share one, a resume writes beside the original."""
    out_dir = Path(out_dir)
    taken = [name for name in RUN_FILES if (out_dir / name).exists()]
    if taken:
        raise RunDirInUse(
            f"paths.output_dir={out_dir} already holds a run ({', '.join(taken)}); runs never share a directory: "
            "choose a new hydra.run.dir (resume with ckpt_path=..., which writes beside the original)"
        )


def load_trained_weights(model, ckpt_path: str) -> None:
    """The checkpoint's trained tensors into a built model, outside any Trainer (predict, export); eval mode.
    `on_load_checkpoint` validates the fit first, with one clear error otherwise."""
    checkpoint = read_checkpoint(ckpt_path)
    model.on_load_checkpoint(checkpoint)
    model.load_state_dict(checkpoint["state_dict"], strict=False)
    model.eval()


def _stored_and_ours(stored: DictConfig, cfg: DictConfig, key: str) -> tuple[Any, Any] | None:
    """(checkpoint's value, this run's value) of `key` as plain data; None when either side does not resolve here."""
    try:
        values = (OmegaConf.select(stored, key, default=None), OmegaConf.select(cfg, key, default=None))
        return tuple(OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v for v in values)
    except Exception:  # noqa: BLE001 - an interpolation only the training machine resolves: not comparable
        return None


def check_checkpoint_fits(cfg: DictConfig, ckpt_path: str | None, *, resume: bool = False) -> None:
    """Read `ckpt_path` now (missing/truncated: CheckpointError) and compare the model-defining config it was
    trained with (backbone, adapter shape, encoder architecture, gate) to `cfg`, before anything heavy loads.
    `resume`: training continues from it, so it must carry the optimizer and loop state (a `last.ckpt`)."""
    if not ckpt_path:
        return
    checkpoint = read_checkpoint(ckpt_path)
    if resume and "optimizer_states" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {ckpt_path} holds model weights only (a best-* checkpoint) and cannot resume training: "
            "resume from checkpoints/last.ckpt (or ckpt_path=last); evaluate this one with ilora-eval"
        )
    stored = OmegaConf.create(run_config_of(checkpoint, ckpt_path))
    for section, ignored in FIT_SECTIONS.items():
        keys = set(OmegaConf.select(stored, section, default=None) or {}) | set(cfg.get(section) or {})
        for key in sorted(keys - set(ignored)):
            pair = _stored_and_ours(stored, cfg, f"{section}.{key}")
            if pair is None:
                continue
            theirs, ours = pair
            if theirs != ours:
                raise CheckpointError(
                    f"checkpoint {ckpt_path} was trained with {section}.{key}={theirs!r}, this run has {ours!r}: "
                    "it does not fit this model (use the same setting or another checkpoint)"
                )
    if resume:
        for key in RESUME_KEYS:
            pair = _stored_and_ours(stored, cfg, key)
            if pair is None:
                continue
            theirs, ours = pair
            if theirs is not None and theirs != ours:
                raise CheckpointError(
                    f"checkpoint {ckpt_path} was trained with {key}={theirs!r}, this run has {ours!r}: a resumed run "
                    f"must keep it to replay the run it continues (set {key}={theirs!r})"
                )


def run_mode_is_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def resolve_ckpt_path(cfg: DictConfig) -> str | None:
    """`ckpt_path=last`: the newest `last.ckpt` of an earlier run of this task; a path is checked to exist.

    The resumed run writes into its own new directory beside the original, never over it.
    """
    choice = OmegaConf.select(cfg, "ckpt_path")
    if choice in (None, ""):
        return None
    if choice != "last":
        if not Path(choice).is_file():
            raise ConfigError(f"ckpt_path={choice} does not exist")
        return str(choice)
    root = Path(cfg.paths.log_dir) / cfg.task_name
    candidates = [p for p in root.glob("**/checkpoints/last.ckpt") if Path(cfg.paths.output_dir) not in p.parents]
    if not candidates:
        raise ConfigError(f"ckpt_path=last found no checkpoints/last.ckpt under {root}")
    return str(max(candidates, key=lambda p: p.stat().st_mtime))


def report_failure(cfg: DictConfig, error: BaseException) -> None:
    """Mark the run directory failed (status.json) and print one line for user errors."""
    out = OmegaConf.select(cfg, "paths.output_dir", default=None)
    message = str(error) if isinstance(error, IloraError) else f"{type(error).__name__}: {error}"
    if isinstance(error, IloraError):
        print(f"error: {message}", file=sys.stderr)
    if out and not isinstance(error, RunDirInUse):  # never write into another run's directory
        detail = "" if isinstance(error, IloraError) else traceback.format_exc()
        write_json(Path(out) / "status.json", {"status": "failed", "error": message, "traceback": detail})


def continue_wandb_run(cfg: DictConfig, ckpt_path: str | None) -> None:
    """A resumed run logs into the W&B run its checkpoint came from (the id is stored by `WandbRunId`)."""
    wandb_cfg = OmegaConf.select(cfg, "logger.wandb")
    if not ckpt_path or wandb_cfg is None:
        return
    run_id = read_checkpoint(ckpt_path).get("wandb_run_id")
    if run_id:
        with open_dict(wandb_cfg):
            wandb_cfg.id = run_id
            wandb_cfg.resume = "allow"


def run_or_exit(task, cfg: DictConfig):
    """Run a CLI task: a user error marks the run failed, prints one line and exits with status 2."""
    try:
        return task(cfg)
    except Exception as error:  # noqa: BLE001 - everything is reported; only user errors are shortened
        report_failure(cfg, error)
        if isinstance(error, IloraError):
            raise SystemExit(2) from None
        raise
