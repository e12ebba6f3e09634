"""Reading our Lightning checkpoints safely (tensors and plain containers only, never pickled code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

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
    checkpoint = read_checkpoint(path)
    config = (checkpoint.get("hyper_parameters") or {}).get("run_config")
    if not config:
        raise CheckpointError(f"checkpoint {path} carries no run_config: not written by ilora-train")
    return config
