"""Encoder artefacts: `encoder.safetensors` (weights) + `config.json` (architecture, data, metrics). No pickle.

`ilora.encoders.cache.ensure_encoder` (a layer above, beside training) returns a cached artefact or trains it.

`load_encoder` checks everything before returning: the config's keys and types, the architecture it names,
and every tensor's name and shape against a freshly built encoder. Any problem is one CheckpointError
that names the file, so a half-copied cache fails at start-up instead of producing a silently wrong model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ilora.encoders.base import SequentialEncoder
from ilora.encoders.registry import build_encoder
from ilora.errors import CheckpointError, ConfigError
from ilora.jsonfile import read_json_object

WEIGHTS = "encoder.safetensors"
CONFIG = "config.json"
FORMAT = 1


def save_encoder(
    encoder: SequentialEncoder, directory: str | os.PathLike, *, dataset: str | None = None,
    metrics: dict[str, Any] | None = None, train: dict[str, Any] | None = None,
) -> Path:
    """Write weights then config (config last, so a complete config.json marks a complete artefact)."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, root / WEIGHTS, metadata={"format": str(FORMAT), "name": encoder.name})
    config = {
        "format": FORMAT, "name": encoder.name, "num_items": encoder.num_items, "hidden_dim": encoder.hidden_dim,
        "hparams": encoder.hparams(), "dataset": dataset, "metrics": metrics or {}, "train": train or {},
    }
    (root / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return root


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated config.json of an encoder artefact."""
    path = Path(directory) / CONFIG
    keys = (("format", int), ("name", str), ("num_items", int), ("hidden_dim", int), ("hparams", dict))
    config = read_json_object(path, keys, CheckpointError,
                              missing="encoder config not found (train one with `ilora-train-encoder`)")
    if config["format"] != FORMAT:
        raise CheckpointError(f"{path}: format {config['format']} is not supported (expected {FORMAT})")
    if config["hparams"].get("hidden_dim", config["hidden_dim"]) != config["hidden_dim"]:
        raise CheckpointError(f"{path}: hidden_dim {config['hidden_dim']} disagrees with hparams.hidden_dim")
    return config


def load_encoder(directory: str | os.PathLike) -> SequentialEncoder:
    """A frozen encoder in eval mode, rebuilt from config.json and filled from encoder.safetensors."""
    root = Path(directory)
    config = read_config(root)
    try:
        encoder = build_encoder(config["name"], config["num_items"], **config["hparams"])
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{root / CONFIG}: cannot rebuild the encoder ({e})") from e
    path = root / WEIGHTS
    if not path.is_file():
        raise CheckpointError(f"{path}: encoder weights not found")
    try:
        tensors = load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable or truncated safetensors file ({e})") from e
    expected = encoder.state_dict()
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{path}: tensors do not match {config['name']} (missing {missing}, unexpected {extra})")
    for key, value in expected.items():
        if tensors[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(tensors[key].shape)}, config.json implies {tuple(value.shape)}"
            )
    encoder.load_state_dict(tensors)
    return freeze(encoder)


def freeze(encoder: SequentialEncoder) -> SequentialEncoder:
    """No gradients, eval mode (dropout off): how the LLM stage uses a pretrained encoder."""
    encoder.requires_grad_(False)
    return encoder.eval()
