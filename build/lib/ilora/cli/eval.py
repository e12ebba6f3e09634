"""`ilora-eval ckpt_path=...`: test a trained checkpoint with the config it was trained with."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, OmegaConf

from ilora.checkpoints import read_run_config
from ilora.cli import CONFIG_PATH
from ilora.cli.common import task_wrapper, write_json
from ilora.cli.components import build_all, instantiate_list
from ilora.cli.runs import check_checkpoint_fits, claim_run_dir, run_or_exit
from ilora.errors import ConfigError


def model_config(cfg: DictConfig) -> DictConfig:
    """The checkpoint's training config, with this run's paths/trainer/logger and the user's overrides."""
    stored = OmegaConf.create(read_run_config(cfg.ckpt_path))
    own = [key for key in ("trainer", "logger", "paths", "task_name") if key in cfg]
    merged = OmegaConf.merge(stored, OmegaConf.masked_copy(cfg, own))
    if "logger" in own:  # the checkpoint's loggers must not leak into this run
        merged.logger = cfg.logger
    if cfg.get("data") is not None:  # evaluate on another dataset of the same catalogue (data=<name>)
        trained_on = merged.data
        merged.data = cfg.data
        if OmegaConf.select(merged, "data.encoder_data") is None and cfg.data.name != trained_on.name:
            merged.data.encoder_data = trained_on.name  # keep the encoder the checkpoint was trained with
    merged = OmegaConf.merge(merged, cfg.get("override") or {})
    merged.ckpt_path = None
    return merged


@task_wrapper
def evaluate(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    start = time.time()
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split={cfg.split} must be test or val")
    run_cfg = model_config(cfg)
    check_checkpoint_fits(run_cfg, cfg.ckpt_path)
    out_dir = Path(cfg.paths.output_dir)
    claim_run_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(run_cfg, out_dir / "config.yaml")
    pl.seed_everything(int(run_cfg.get("seed", 0)), workers=True, verbose=False)
    parts = build_all(run_cfg)
    trainer: pl.Trainer = hydra.utils.instantiate(
        cfg.trainer, logger=instantiate_list(cfg.get("logger")) or False, callbacks=[]
    )
    run = trainer.test if cfg.split == "test" else trainer.validate
    run(parts["model"], datamodule=parts["datamodule"], ckpt_path=str(cfg.ckpt_path), weights_only=True)
    metrics = dict(parts["model"].eval_results[cfg.split]["metrics"])
    metrics["wall_time_s"] = time.time() - start
    write_json(out_dir / "metrics.json", metrics)
    write_json(out_dir / "status.json", {"status": "completed", "ckpt_path": str(cfg.ckpt_path)})
    return metrics, {"trainer": trainer, **parts}


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    metrics, _ = run_or_exit(evaluate, cfg)
    for key in sorted(metrics):
        print(f"{key:32s} {metrics[key]:.4f}")


def main() -> None:
    _hydra_main()


if __name__ == "__main__":
    main()
