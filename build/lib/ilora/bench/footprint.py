"""Memory and disk: peak resident memory of a short `ilora-train` run, and its checkpoint size vs the backbone.

The run is a child process (so its peak RSS is its own, read from `wait4`'s rusage). It writes both kinds of
checkpoint the default callbacks keep: `best-*.ckpt` (the model: adapters, projector, gate; what evaluation,
prediction and sharing use) and `last.ckpt` (the model plus AdamW moments and loop state, for resuming).
Backbone size = the frozen backbone's parameter bytes in its training dtype (for SmolLM2 on CPU: fp32, the size
of the cached dequantised safetensors).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# A short fit of the default config (one optimiser step = trainer.accumulate_grad_batches micro-batches), a
# ranking-only validation on 8 users (so the best checkpoint is written), a last.ckpt, a tiny ranking-only test.
SHORT_RUN = [
    "logger=csv",
    "trainer.max_steps=1",
    "trainer.limit_train_batches=${trainer.accumulate_grad_batches}",  # the epoch ends with the step: validation
    "trainer.enable_progress_bar=false",
    "callbacks.last_checkpoint.every_n_train_steps=1",
    "data.limit_val_examples=8",
    "data.limit_test_examples=8",
    "model.evaluation.generate=false",
]


def short_training_run(run_dir: str | os.PathLike, overrides: Sequence[str] = (), *,
                       timeout: float = 900, threads: int | None = None) -> dict[str, object]:
    """Run `python -m ilora.cli.train` into `run_dir`; returns peak_rss_gb, seconds, and both checkpoints' sizes.

    `threads` sets OMP_NUM_THREADS for the child (None: its default)."""
    run_dir = Path(run_dir)
    cmd = [sys.executable, "-m", "ilora.cli.train", *SHORT_RUN, *overrides, f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    log = (run_dir.parent / f"{run_dir.name}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                raise TimeoutError(f"short training run exceeded {timeout:.0f} s; log: {log}")
            time.sleep(0.2)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"short training run failed (exit {code}): {' '.join(cmd)}\n{tail}")
    last = run_dir / "checkpoints" / "last.ckpt"
    best = sorted((run_dir / "checkpoints").glob("best-*.ckpt"))
    if not last.is_file() or not best:
        raise FileNotFoundError(f"the short training run wrote no last.ckpt or best-*.ckpt in {last.parent}")
    return {"peak_rss_gb": usage.ru_maxrss * 1024 / 1e9, "train_run_s": time.perf_counter() - start,
            "ckpt_path": str(best[-1]), "ckpt_bytes": best[-1].stat().st_size,
            "resume_ckpt_path": str(last), "resume_ckpt_bytes": last.stat().st_size}


def parameter_bytes(module) -> int:
    """Bytes of a module's parameters (shared tensors once)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
