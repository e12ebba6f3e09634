"""Run-directory rules: where a resume finds its checkpoint, and how a failed run is marked."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from ilora.checkpoints import read_checkpoint
from ilora.cli.common import write_json
from ilora.errors import ConfigError, IloraError


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
    if out:
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
