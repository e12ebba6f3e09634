"""The training recipe of one encoder (the `encoder.train` block): shared by training and the cache check."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from ilora.errors import ConfigError


@dataclass(frozen=True)
class Recipe:
    """Training settings of one encoder (the `encoder.train` block)."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 256
    max_epochs: int = 50
    patience: int = 5
    monitor: str = "val/mrr"  # any logged val metric; names ending in "loss" are minimised

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Recipe:
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"encoder.train.{unknown[0]} is not a training setting (allowed: {sorted(known)})")
        recipe = cls(**values)
        if recipe.lr <= 0 or recipe.batch_size < 1 or recipe.max_epochs < 1 or recipe.patience < 1:
            raise ConfigError(f"encoder.train needs lr > 0, batch_size, max_epochs, patience >= 1; got {values}")
        return recipe
