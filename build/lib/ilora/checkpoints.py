"""Reading and writing our Lightning checkpoints safely: tensors and plain containers only (never pickled
code), and every write atomic, so a crash during a save leaves the previous file whole."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO

from ilora.errors import CheckpointError


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """`torch.load(weights_only=True)`, with one clear error for missing, truncated or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated/corrupt archives
        raise CheckpointError(f"checkpoint {path} cannot be read (truncated or not a checkpoint): {e}") from e
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint {path} has no state_dict: not a Lightning checkpoint")
    return checkpoint


def read_run_config(path: str | Path) -> dict[str, Any]:
    """The resolved training config stored in an ilora checkpoint."""
    return run_config_of(read_checkpoint(path), path)


def run_config_of(checkpoint: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The training config inside a checkpoint already read from `path`."""
    config = (checkpoint.get("hyper_parameters") or {}).get("run_config")
    if not config:
        raise CheckpointError(f"checkpoint {path} carries no run_config: not written by ilora-train")
    return config


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning `CheckpointIO` whose local writes are atomic and whose loads never unpickle code.

    A save goes to `<name>.tmp` in the same directory, is flushed to disk, then renamed over `<name>`
    (`os.replace`, atomic on POSIX), so a kill mid-save leaves the old `last.ckpt` intact. Lightning's own
    writer stages the file in the system temp directory and moves it, which is a plain copy (not atomic)
    when that directory is on another filesystem. Remote URLs fall back to Lightning's writer.
    Loads are `weights_only=True` whatever the caller asks.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with tmp.open("wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location or (lambda storage, loc: storage),
                                       weights_only=True)
