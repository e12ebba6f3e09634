"""Name -> encoder class, and `build_encoder` from a config mapping (conf/encoder/<name>.yaml)."""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ilora.encoders.base import SequentialEncoder
from ilora.encoders.caser import Caser
from ilora.encoders.gru4rec import GRU4Rec
from ilora.encoders.sasrec import SASRec
from ilora.errors import ConfigError

ENCODERS: dict[str, type[SequentialEncoder]] = {cls.name: cls for cls in (SASRec, GRU4Rec, Caser)}
NON_ARCH_KEYS = ("name", "train")  # encoder config keys that are not constructor arguments


def architecture(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor keywords of a plain encoder config mapping (drops `name` and the `train` recipe)."""
    return {k: v for k, v in cfg.items() if k not in NON_ARCH_KEYS}


def build_encoder(name: str, num_items: int, **hparams: Any) -> SequentialEncoder:
    """A fresh encoder; unknown names or keywords raise ConfigError naming the `encoder.*` key."""
    if name not in ENCODERS:
        raise ConfigError(f"encoder.name={name!r} is unknown; choose one of {sorted(ENCODERS)}")
    cls = ENCODERS[name]
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self", "num_items"}
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        raise ConfigError(f"encoder.{unknown[0]} is not a {name} setting (allowed: {sorted(allowed)})")
    return cls(num_items=num_items, **hparams)


def build_from_config(cfg: Mapping[str, Any], num_items: int) -> SequentialEncoder:
    """`build_encoder` from a whole encoder config mapping (`name` + architecture keys + optional `train`)."""
    if "name" not in cfg:
        raise ConfigError("encoder.name is missing (expected one of " + ", ".join(sorted(ENCODERS)) + ")")
    return build_encoder(str(cfg["name"]), num_items, **architecture(cfg))
