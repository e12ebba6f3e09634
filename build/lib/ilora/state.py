"""Does a state dict fit a model? One check shared by adapter loading and checkpoint restore."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ilora.errors import CheckpointError


def check_state_fits(state: Mapping[str, Any], expected: Mapping[str, Any], *, what: str, hint: str) -> None:
    """CheckpointError unless `state` has exactly the keys of `expected` (name -> shape) with those shapes.

    `what` names the file or kind of checkpoint, `hint` the settings a user should check.
    """
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    if missing or unexpected:
        raise CheckpointError(
            f"{what} does not fit the model: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}) ({hint})"
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != tuple(shape):
            raise CheckpointError(
                f"{what}: {key} has shape {tuple(state[key].shape)}, the model expects {tuple(shape)} ({hint})"
            )
