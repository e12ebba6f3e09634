"""Train, select on val, test and save one encoder (used by `ilora-train-encoder` and `cache.ensure_encoder`).

The recipe (`lr`, `weight_decay`, `batch_size`, `max_epochs`, `patience`, `monitor`) lives in the encoder
config's `train` block (conf/encoder/<name>.yaml) so that `cache.ensure_encoder`, called by the LLM stage with
only that config, trains exactly what `ilora-train-encoder` would. Model selection: EarlyStopping and
ModelCheckpoint on `val/mrr` over the fixed 20-candidate val lists (HR@1 of ~100 val users ties for epochs;
full-catalogue val loss rises on LastFM while ranking still improves); the best weights are reloaded (a
temporary weights-only Lightning checkpoint, read with `torch.load(weights_only=True)`) before testing and
saving. Ties keep the earliest best epoch (ModelCheckpoint replaces only on strict improvement).
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from ilora.data.datasets import load_dataset
from ilora.encoders.base import SequentialEncoder
from ilora.encoders.batches import eval_tensors, loader, train_tensors
from ilora.encoders.io import save_encoder
from ilora.encoders.module import EncoderModule, EpochPrinter
from ilora.encoders.recipe import Recipe
from ilora.encoders.registry import build_from_config
from ilora.errors import ConfigError


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def train_encoder(
    *, data_dir: str | os.PathLike, data_name: str, encoder_cfg: Mapping[str, Any], out_dir: str | os.PathLike,
    seed: int = 0, num_candidates: int = 20, candidate_seed: int = 0, accelerator: str = "cpu",
    log_dir: str | os.PathLike | None = None, verbose: bool = True,
) -> tuple[dict[str, float], SequentialEncoder]:
    """Train on `data_dir`, select on val, test, and save to `out_dir`; returns (metrics, trained encoder).

    `encoder_cfg` is a plain mapping: `name`, architecture keywords, optional `train` recipe.
    """
    encoder_cfg = dict(encoder_cfg)
    recipe = Recipe.from_mapping(encoder_cfg.get("train"))
    data = load_dataset(data_dir)
    if data.name != data_name:
        raise ConfigError(f"data.name={data_name!r} but {data_dir}/meta.json names the dataset {data.name!r}")
    train = train_tensors(data)  # all checks above and here run before any training
    val = eval_tensors(data, "val", num_candidates, candidate_seed)
    test = eval_tensors(data, "test", num_candidates, candidate_seed)
    L.seed_everything(seed, workers=True, verbose=False)
    encoder = build_from_config(encoder_cfg, data.num_items)
    module = EncoderModule(encoder, lr=recipe.lr, weight_decay=recipe.weight_decay)
    tag = f"[{data_name}/{encoder.name}/seed{seed}] "
    if verbose:
        print(f"{tag}{len(train[0])} train examples, {len(val[0])} val, {len(test[0])} test, "
              f"{data.num_items} items, {sum(p.numel() for p in encoder.parameters())} parameters", flush=True)
    _quiet_lightning()
    started = time.perf_counter()
    train_loader = loader(train, recipe.batch_size, shuffle=True, seed=seed)
    with tempfile.TemporaryDirectory(prefix="ilora-encoder-ckpt-") as ckpt_dir:
        mode = "min" if recipe.monitor.endswith("loss") else "max"
        checkpoint = ModelCheckpoint(dirpath=ckpt_dir, monitor=recipe.monitor, mode=mode, save_top_k=1,
                                     save_weights_only=True)
        callbacks = [checkpoint, EarlyStopping(monitor=recipe.monitor, mode=mode, patience=recipe.patience)]
        if verbose:
            callbacks.append(EpochPrinter(tag))
        logger = L.pytorch.loggers.CSVLogger(log_dir, name="", version="") if log_dir else False
        trainer = L.Trainer(
            accelerator=accelerator, devices=1, max_epochs=recipe.max_epochs, callbacks=callbacks, logger=logger,
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, deterministic="warn",
            log_every_n_steps=min(50, len(train_loader)),
        )
        trainer.fit(module, train_loader, loader(val, 1024, shuffle=False))
        best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
        module.load_state_dict(best["state_dict"])
        best_epoch = int(best["epoch"])
    metrics: dict[str, float] = {}
    for run, tensors in ((trainer.validate, val), (trainer.test, test)):
        metrics.update({k: float(v) for k, v in run(module, loader(tensors, 1024, shuffle=False), verbose=False)[0].items()})
    seconds = time.perf_counter() - started
    if verbose:
        print(f"{tag}best epoch {best_epoch}: val/hr@1 {metrics['val/hr@1']:.4f}  test/hr@1 {metrics['test/hr@1']:.4f}"
              f"  test/hr@5 {metrics['test/hr@5']:.4f}  test/ndcg@5 {metrics['test/ndcg@5']:.4f}  ({seconds:.0f}s)",
              flush=True)
    train_info = {**asdict(recipe), "seed": seed, "num_candidates": num_candidates, "candidate_seed": candidate_seed,
                  "best_epoch": best_epoch, "epochs_run": trainer.current_epoch, "seconds": round(seconds, 1)}
    save_encoder(encoder, out_dir, dataset=data_name, metrics=metrics, train=train_info)
    return metrics, encoder.eval()
