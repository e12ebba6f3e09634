"""`ilora-train-encoder` end to end on a tiny dataset, and its one-line error for a bad data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ilora.encoders import load_encoder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
TINY = ["encoder.hidden_dim=8", "encoder.train.max_epochs=2", "encoder.train.batch_size=64", "num_candidates=10"]


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    code = "from ilora.cli.train_encoder import main; main()"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=300)


def test_cli_trains_and_saves(tiny_dir, tmp_path):
    out = tmp_path / "enc"
    result = _cli(f"data.dir={tiny_dir}", "data.name=tiny", "encoder=caser", "seed=1", f"out_dir={out}",
                  f"paths.log_dir={tmp_path / 'logs'}", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "[tiny/caser/seed1] best epoch" in result.stdout
    encoder = load_encoder(out)
    assert encoder.name == "caser" and encoder.hidden_dim == 8
    run_metrics = list((tmp_path / "logs" / "train_encoder").rglob("metrics.json"))
    assert len(run_metrics) == 1 and "test/hr@1" in json.loads(run_metrics[0].read_text())


def test_cli_bad_data_dir_is_one_line_exit_2(tmp_path):
    result = _cli(f"data.dir={tmp_path / 'missing'}", "data.name=tiny", f"out_dir={tmp_path / 'enc'}",
                  f"paths.log_dir={tmp_path / 'logs'}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "missing" in result.stderr and "Traceback" not in result.stderr
