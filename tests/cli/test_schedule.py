"""Optimiser groups, lr multipliers, linear warmup + cosine to min_lr_ratio: the lr of every step, from the CSV log."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from ilora.cli.train import train
from ilora.errors import ConfigError


def expected_lr(step: int, total: int, warmup: int, base: float, floor: float) -> float:
    """Closed form of warmup then half-cosine from `base` to `base * floor` (written here, not imported)."""
    if step < warmup:
        return base * step / warmup
    progress = (step - warmup) / (total - warmup)
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_each_group_follows_warmup_and_cosine_to_its_floor(train_cfg):
    cfg = train_cfg("trainer.max_steps=10", "trainer.max_epochs=5", "trainer.limit_train_batches=2",
                    "model.optimizer.lr=0.01", "model.scheduler.warmup_ratio=0.2", "model.scheduler.min_lr_ratio=0.1",
                    "model.lr_multipliers.projector=2.0", "model.lr_multipliers.gate=0.5")
    _, objects = train(cfg)
    optimizer = objects["trainer"].optimizers[0]
    model = objects["model"]
    groups = [{id(p) for p in g["params"]} for g in optimizer.param_groups]
    adapters = {id(p) for n, p in model.named_parameters() if p.requires_grad and ("lora_A" in n or "lora_B" in n)}
    assert groups == [adapters, {id(p) for p in model.projector.parameters()}, {id(p) for p in model.gate.parameters()}]
    log = pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")
    columns = sorted(c for c in log.columns if c.startswith("lr-"))
    assert len(columns) == 3, columns
    for column, multiplier in zip(columns, (1.0, 2.0, 0.5)):
        rows = log.dropna(subset=[column])
        seen = dict(zip(rows["step"].astype(int), rows[column]))
        for step in range(10):
            assert seen[step] == pytest.approx(expected_lr(step, 10, 2, 0.01 * multiplier, 0.1), rel=1e-6), (column, step)


def test_unknown_or_out_of_range_scheduler_settings_fail_early(train_cfg):
    with pytest.raises(ConfigError, match="model.scheduler.min_lr=.*not a scheduler setting|model.scheduler.min_lr is not"):
        train(train_cfg("+model.scheduler.min_lr=0.1", run="a"))
    with pytest.raises(ConfigError, match=r"model.scheduler.min_lr_ratio=1.5 must be a number in \[0, 1\]"):
        train(train_cfg("model.scheduler.min_lr_ratio=1.5", run="b"))
