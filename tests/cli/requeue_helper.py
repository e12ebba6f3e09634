"""A test-only callback: the signal a cluster sends before a job's time limit, once, at a chosen optimiser step."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class SignalOnce(Callback):
    def __init__(self, step: int, marker: str, signum: str = "SIGUSR2") -> None:
        self.step, self.marker, self.signum = int(step), Path(marker), signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step and not self.marker.exists():
            self.marker.write_text(f"{self.signum} at step {trainer.global_step}\n")
            os.kill(os.getpid(), getattr(signal, self.signum))
