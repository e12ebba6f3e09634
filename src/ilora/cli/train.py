"""`ilora-train`: fit a recommender, then test it with the best checkpoint.

`train(cfg) -> (metrics, objects)` is plain Python (tests call it); `main` wraps it with Hydra.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from ilora.callbacks import usable_callbacks
from ilora.cli import CONFIG_PATH
from ilora.cli.common import flat_metrics, is_rank_zero, task_wrapper, write_json
from ilora.cli.components import build_all, encoder_dir, instantiate_list
from ilora.cli.runs import (
    check_checkpoint_fits,
    claim_run_dir,
    continue_wandb_run,
    report_failure,
    resolve_ckpt_path,
    run_mode_is_multirun,
    unfinished_own_run,
)
from ilora.cli.summary import summary_table
from ilora.data.prompts import absolute_source
from ilora.errors import ConfigError, IloraError

SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM, as a shell reports it: the run stopped early, cleanly, and can resume


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit (unless nothing is trainable), test, and write metrics.json into the run directory."""
    start = time.time()
    objective_name(cfg)  # a search's objective is checked before any work
    out_dir = Path(cfg.paths.output_dir)
    if OmegaConf.select(cfg, "data.prompts", default=None):  # a prompt file: stored absolute in the checkpoint
        with open_dict(cfg):
            cfg.data.prompts = absolute_source(cfg.data.prompts)
    own = unfinished_own_run(cfg, out_dir)  # a requeued job back in its own directory: continue it in place
    if not own and is_rank_zero():
        claim_run_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_rank_zero() and not own:
        OmegaConf.save(cfg, out_dir / "config.yaml", resolve=True)
    pl.seed_everything(int(cfg.seed), workers=True, verbose=False)

    ckpt_path = resolve_ckpt_path(cfg)
    last = out_dir / "checkpoints" / "last.ckpt"
    if own and last.is_file():
        ckpt_path = str(last)
        print(f"[ilora] {out_dir} holds this run unfinished (requeued?): resuming in place from {last}", flush=True)
    check_checkpoint_fits(cfg, ckpt_path, resume=True)
    parts = build_all(cfg)
    model, datamodule = parts["model"], parts["datamodule"]
    continue_wandb_run(cfg, ckpt_path)
    loggers = instantiate_list(cfg.get("logger"))
    callbacks = usable_callbacks(instantiate_list(cfg.get("callbacks")), loggers)
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)

    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fitted = trainable > 0 and int(cfg.trainer.get("max_steps", -1)) != 0
    if fitted:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    objective = cfg.get("optimized_metric")
    if objective and objective not in flat_metrics(trainer.callback_metrics):
        trainer.validate(model, datamodule=datamodule, verbose=False)  # a search's objective: the final weights
    if cfg.get("test", True):
        test_ckpt = _test_checkpoint(cfg, trainer) if fitted else None
        trainer.test(model, datamodule=datamodule, ckpt_path=test_ckpt, weights_only=True)

    metrics = {k: v for k, v in flat_metrics(trainer.callback_metrics).items() if k.startswith(("val/", "test/"))}
    for result in model.eval_results.values():  # the last epoch's full set, not a step value
        metrics.update(result["metrics"])
    for split, count in model.truncated_counts().items():
        metrics[f"data/{split}_prompts_truncated"] = float(count)
        if count and trainer.is_global_zero:
            print(f"[ilora] {count} {split} prompts exceeded {datamodule.prompt_token_limit} tokens "
                  "(data.max_prompt_tokens or the backbone's context): their oldest history items were dropped")
    metrics["trainable_parameters"] = float(trainable)
    metrics["wall_time_s"] = time.time() - start
    if trainer.is_global_zero:
        write_json(out_dir / "metrics.json", metrics)
        write_json(out_dir / "status.json", {"status": "completed"})
        print(summary_table(metrics, encoder_dir(cfg), cfg.encoder.name))
    return metrics, {"trainer": trainer, **parts}


def objective_name(cfg: DictConfig) -> str:
    """The metric a sweeper optimises: `optimized_metric`, which must be a validation metric (never test)."""
    name = cfg.get("optimized_metric")
    if name is None:
        return "test/rank_hr@1"
    if not str(name).startswith("val/"):
        raise ConfigError(f"optimized_metric={name}: a search must optimise a validation metric (val/...), "
                          "never the test split")
    return str(name)


def _test_checkpoint(cfg: DictConfig, trainer: pl.Trainer) -> str | None:
    """`best` falls back to the current weights when no checkpoint was written (e.g. no validation ran)."""
    choice = cfg.get("test_ckpt", "best")
    if choice == "best":
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        return best or None
    return choice


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        metrics, _ = train(cfg)
    except SIGTERMException:  # Lightning stopped after the current batch; LastCheckpointOnStop saved last.ckpt
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if is_rank_zero():
            write_json(Path(cfg.paths.output_dir) / "status.json", {"status": "interrupted", "resume": str(last)})
        print(f"[ilora] SIGTERM: saved {last}; resume with ckpt_path={last}", file=sys.stderr)
        raise SystemExit(SIGTERM_EXIT_CODE) from None
    except Exception as error:  # noqa: BLE001 - a sweep goes on past a crashing run
        report_failure(cfg, error)
        if run_mode_is_multirun():
            return None
        if isinstance(error, IloraError):
            raise SystemExit(2) from None
        raise
    return metrics.get(objective_name(cfg))


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
