"""In-framework training on a tiny synthetic dataset: the loss falls, metrics and artefact are written."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from ilora.data.datasets import load_dataset
from ilora.encoders import ensure_encoder, load_encoder, read_config
from ilora.encoders.batches import train_tensors
from ilora.encoders.train import train_encoder

CFG = {"name": "gru4rec", "hidden_dim": 16, "dropout": 0.0,
       "train": {"lr": 0.02, "batch_size": 16, "max_epochs": 4, "patience": 10}}


def test_training_lowers_the_loss_and_saves_a_loadable_encoder(tiny_dir, tmp_path):
    metrics, encoder = train_encoder(data_dir=tiny_dir, data_name="tiny", encoder_cfg=CFG, out_dir=tmp_path / "enc",
                                     seed=0, num_candidates=10, log_dir=tmp_path / "logs", verbose=False)
    losses = pd.read_csv(tmp_path / "logs" / "metrics.csv")["train/loss"].dropna().to_numpy()
    assert len(losses) == CFG["train"]["max_epochs"] and losses[-1] < losses[0] - 0.2, losses
    loaded = load_encoder(tmp_path / "enc")  # the saved encoder is the one returned
    history, lengths, _ = train_tensors(load_dataset(tiny_dir))
    torch.testing.assert_close(loaded(history, lengths), encoder(history, lengths))
    for key in ("val/hr@1", "test/hr@1", "test/hr@5", "test/ndcg@5", "test/ndcg@10", "test/mrr"):
        assert 0.0 <= metrics[key] <= 1.0, key
    config = read_config(tmp_path / "enc")
    assert config["dataset"] == "tiny" and config["metrics"]["test/hr@1"] == metrics["test/hr@1"]
    assert 0 <= config["train"]["best_epoch"] < CFG["train"]["max_epochs"] and config["train"]["lr"] == CFG["train"]["lr"]


def test_ensure_encoder_trains_once(tiny_dir, tmp_path):
    cfg = {**CFG, "name": "sasrec", "train": {**CFG["train"], "max_epochs": 1}}
    out = ensure_encoder(tiny_dir, "tiny", cfg, tmp_path / "enc", seed=0)
    stamp = (out / "encoder.safetensors").stat().st_mtime_ns
    assert ensure_encoder(tiny_dir, "tiny", cfg, tmp_path / "enc", seed=0) == out
    assert (out / "encoder.safetensors").stat().st_mtime_ns == stamp
    assert load_encoder(out).name == "sasrec"


def test_train_examples_have_a_history(tiny_dir):
    data = load_dataset(tiny_dir)
    history, lengths, target = train_tensors(data)
    assert (lengths >= 1).all() and len(target) == sum(len(h) > 0 for h in data.splits["train"].history)
    assert (history[torch.arange(history.shape[1])[None, :] >= lengths[:, None]] == data.padding_id).all()


def test_default_recipe_selects_the_epoch_with_the_best_val_mrr(tiny_dir, tmp_path):
    """No `monitor` given: the kept weights are the val-MRR maximum's (first on ties), and val is re-measured."""
    cfg = {**CFG, "train": {"lr": 0.05, "batch_size": 16, "max_epochs": 6, "patience": 10}}
    metrics, _ = train_encoder(data_dir=tiny_dir, data_name="tiny", encoder_cfg=cfg, out_dir=tmp_path / "enc",
                               seed=0, num_candidates=10, log_dir=tmp_path / "logs", verbose=False)
    log = pd.read_csv(tmp_path / "logs" / "metrics.csv")
    per_epoch = log.dropna(subset=["val/mrr"]).groupby("epoch")["val/mrr"].first()
    per_epoch = per_epoch[per_epoch.index < 6]  # the fit's epochs (the re-validation logs under the last one)
    best = int(per_epoch.idxmax())
    assert per_epoch.nunique() > 1 and read_config(tmp_path / "enc")["train"]["best_epoch"] == best
    assert metrics["val/mrr"] == pytest.approx(per_epoch[best], abs=1e-6)
