"""The encoder cache the LLM stage relies on: reuse a matching trained artefact, or train it once.

Above `io` (artefact files) and `train` (Lightning training), so neither imports the other's caller.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ilora.encoders.io import CONFIG, WEIGHTS, read_config
from ilora.encoders.recipe import Recipe
from ilora.encoders.registry import build_from_config
from ilora.errors import CheckpointError


def ensure_encoder(
    data_dir: str | os.PathLike, data_name: str, encoder_cfg: Mapping[str, Any], out_dir: str | os.PathLike,
    seed: int = 0,
) -> Path:
    """Path of a trained encoder in `out_dir`, training it first when `config.json` / weights are missing.

    A cached artefact must match the request (dataset, encoder name, seed, architecture and training recipe:
    an encoder trained with another monitor or budget would silently change every score built on it);
    otherwise CheckpointError says which setting differs, rather than silently reusing or overwriting it.
    Recipe settings the artefact does not record (older artefacts) are not compared.
    """
    out = Path(out_dir)
    encoder_cfg = dict(encoder_cfg)
    if not (out / CONFIG).is_file() or not (out / WEIGHTS).is_file():
        from ilora.encoders.train import train_encoder  # lazy: Lightning loads only when training is needed

        train_encoder(data_dir=data_dir, data_name=data_name, encoder_cfg=encoder_cfg, out_dir=out, seed=seed)
        return out
    config = read_config(out)
    arch = build_from_config(encoder_cfg, config["num_items"]).hparams()
    recipe = asdict(Recipe.from_mapping(encoder_cfg.get("train")))
    trained = config.get("train", {})
    want = {"dataset": data_name, "name": encoder_cfg.get("name"), "seed": seed,
            **{f"hparams.{k}": v for k, v in arch.items()},
            **{f"train.{k}": v for k, v in recipe.items() if k in trained}}
    have = {"dataset": config.get("dataset"), "name": config["name"], "seed": trained.get("seed"),
            **{f"hparams.{k}": v for k, v in config["hparams"].items()},
            **{f"train.{k}": trained[k] for k in recipe if k in trained}}
    for key, value in want.items():
        if have.get(key) != value:
            raise CheckpointError(
                f"{out / CONFIG}: cached encoder has {key}={have.get(key)!r} but {value!r} was requested; "
                f"delete {out} or choose another output directory"
            )
    return out


