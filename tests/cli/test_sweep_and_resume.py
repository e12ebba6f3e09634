"""Real processes: a Hydra multirun sweep followed by ilora-report, and SIGKILL-then-resume exactness."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


def cli(tool: str, *args: str, slow_steps: float = 0.0) -> list[str]:
    """The console script as a subprocess; `slow_steps` sleeps in each training step (to kill it mid-run)."""
    patch = (
        "import time; from ilora.recommender import Recommender as R; step = R.training_step; "
        f"R.training_step = lambda self, b, i: (time.sleep({slow_steps}), step(self, b, i))[1]; "
        if slow_steps else ""
    )
    code = f"import sys; {patch}from ilora.cli.{tool} import main; sys.argv[0] = '{tool}'; main()"
    return [sys.executable, "-c", code, *args]


@pytest.fixture
def tiny_cli(tiny_base, tiny_data_dir, encoder_cache, tmp_path):
    return [
        *tiny_base,
        "model.evaluation.max_new_tokens=4",
        f"data.dir={tiny_data_dir}",
        "data.name=tiny",
        f"paths.encoder_dir={encoder_cache}",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]


def test_multirun_over_experts_then_report(tiny_cli, tmp_path):
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        cli("train", "-m", "adapter.num_experts=1,2", "adapter.rank=4", "trainer.max_steps=2",
            "trainer.limit_train_batches=2", f"hydra.sweep.dir={sweep}", *tiny_cli),
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    runs = sorted(p.parent for p in sweep.glob("*/metrics.json"))
    assert [json.loads((r / "status.json").read_text())["status"] for r in runs] == ["completed", "completed"]
    report = subprocess.run(cli("report", str(sweep)), capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr[-2000:]
    table = (sweep / "report.md").read_text()
    assert table.count("| tiny | tiny_random |") == 2  # one row per expert count
    assert "| LoRA | 1 |" in table and "| iLoRA | 2 |" in table
    assert (sweep / "hr1_vs_experts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_crashing_run_does_not_stop_the_sweep(tiny_cli, tmp_path):
    sweep = tmp_path / "sweep"
    run = subprocess.run(
        cli("train", "-m", "adapter.num_experts=3,2", "adapter.rank=4", "trainer.max_steps=1",
            "trainer.limit_train_batches=1", f"hydra.sweep.dir={sweep}", *tiny_cli),
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    failed = json.loads((sweep / "0" / "status.json").read_text())
    assert failed["status"] == "failed" and "adapter.num_experts=3 does not divide adapter.rank=4" in failed["error"]
    assert json.loads((sweep / "1" / "status.json").read_text())["status"] == "completed"


def _trainable(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, weights_only=True)["state_dict"]


def test_sigkill_then_resume_matches_uninterrupted_run(tiny_cli, tmp_path):
    # 2 micro-batches per optimiser step, as the default config accumulates: the resumed sampler must skip
    # micro-batches, not steps. Validation runs between saves (every 3 micro-batches, off the accumulation
    # boundaries): whatever it draws must not change the dropout masks that follow
    common = ["trainer.max_steps=8", "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=16",
              "trainer.val_check_interval=3", "adapter.dropout=0.3",
              "callbacks.last_checkpoint.every_n_train_steps=1", "model.evaluation.generate=false",
              "trainer.deterministic=true", "data.limit_test_examples=2"]
    tiny_cli = [o for o in tiny_cli if not o.startswith("trainer.accumulate_grad_batches=")]
    full = tmp_path / "full"
    done = subprocess.run(cli("train", *common, *tiny_cli, f"hydra.run.dir={full}"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli("train", *common, *tiny_cli, f"hydra.run.dir={killed}", slow_steps=0.5),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = killed / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while time.time() < deadline:
        if last.is_file() and torch.load(last, weights_only=True)["global_step"] >= 3:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = torch.load(last, weights_only=True)["global_step"]
    assert 3 <= step_at_kill < 8

    resumed = tmp_path / "resumed"
    again = subprocess.run(cli("train", *common, *tiny_cli, f"hydra.run.dir={resumed}", f"ckpt_path={last}"),
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    # exact, so Lightning's warning that a mid-epoch resume "can cause unreliable results" is not shown
    assert "not resumable" not in again.stdout + again.stderr
    a, b = _trainable(full / "checkpoints" / "last.ckpt"), _trainable(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
