"""Every logger config completes a tiny run; callbacks that need a logger do not break a run without one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ilora.cli.train import train


@pytest.mark.parametrize("logger", ["none", "csv", "wandb", "tensorboard"])
def test_each_logger_completes_a_tiny_run(logger, train_cfg, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = train_cfg(f"logger={logger}", "trainer.max_steps=2", "trainer.limit_train_batches=2")
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert objects["trainer"].global_step == 2 and "test/rank_hr@1" in metrics
    written = {
        "none": lambda: not objects["trainer"].loggers,
        "csv": lambda: "lr-AdamW" in (out / "csv" / "metrics.csv").read_text().splitlines()[0],
        "wandb": lambda: len(list((out / "wandb").glob("offline-run-*"))) == 1,
        "tensorboard": lambda: len(list((out / "tensorboard").rglob("events.out.tfevents.*"))) >= 1,
    }
    assert written[logger](), f"logger={logger} wrote nothing where expected"
    if logger == "none":
        assert "learning-rate monitor is off" in capsys.readouterr().out
