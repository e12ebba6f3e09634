"""Safetensors save/load: exact round trip, frozen result, and one CheckpointError per kind of damage."""

from __future__ import annotations

import json

import pytest
import torch

from ilora.encoders import build_encoder, ensure_encoder, load_encoder, read_config, save_encoder
from ilora.errors import CheckpointError


def test_round_trip_is_exact_and_frozen(encoder, random_history, tmp_path):
    save_encoder(encoder, tmp_path, dataset="tiny", metrics={"test/hr@1": 0.5}, train={"seed": 3})
    loaded = load_encoder(tmp_path)
    assert type(loaded) is type(encoder) and loaded.hparams() == encoder.hparams()
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    history, lengths = random_history(4, 10)
    torch.testing.assert_close(loaded(history, lengths), encoder(history, lengths), rtol=0, atol=0)
    config = read_config(tmp_path)
    assert (config["name"], config["dataset"], config["num_items"]) == (encoder.name, "tiny", encoder.num_items)
    assert config["metrics"] == {"test/hr@1": 0.5} and config["train"] == {"seed": 3}


def test_truncated_weights_name_the_file(tmp_path):
    save_encoder(build_encoder("gru4rec", 30, hidden_dim=8), tmp_path)
    weights = tmp_path / "encoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="encoder.safetensors.*truncated"):
        load_encoder(tmp_path)


def test_shape_mismatch_names_the_tensor(tmp_path):
    save_encoder(build_encoder("sasrec", 30, hidden_dim=8), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_items"] = 31
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"encoder.safetensors: items.weight has shape \(31, 8\)"):
        load_encoder(tmp_path)


def test_config_and_weights_of_different_architectures(tmp_path):
    save_encoder(build_encoder("gru4rec", 30, hidden_dim=8), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["name"], config["hparams"] = "sasrec", {"hidden_dim": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="tensors do not match sasrec"):
        load_encoder(tmp_path)


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda d: (d / "config.json").unlink(), "config.json: encoder config not found"),
        (lambda d: (d / "encoder.safetensors").unlink(), "encoder.safetensors: encoder weights not found"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json: not valid JSON"),
        (lambda d: (d / "config.json").write_text('{"format": 1, "name": "caser"}'), "'num_items' must be a int"),
    ],
)
def test_missing_or_bad_files(tmp_path, damage, match):
    save_encoder(build_encoder("caser", 30, hidden_dim=8), tmp_path)
    damage(tmp_path)
    with pytest.raises(CheckpointError, match=match):
        load_encoder(tmp_path)


def test_ensure_encoder_reuses_a_matching_cache_and_refuses_a_different_one(tmp_path, monkeypatch):
    import ilora.encoders.train as train_mod

    def no_training(**_):
        raise AssertionError("ensure_encoder retrained a cached encoder")

    monkeypatch.setattr(train_mod, "train_encoder", no_training)
    save_encoder(build_encoder("sasrec", 30, hidden_dim=8), tmp_path, dataset="tiny", train={"seed": 0})
    cfg = {"name": "sasrec", "hidden_dim": 8, "train": {"lr": 0.01}}
    assert ensure_encoder("unused", "tiny", cfg, tmp_path, seed=0) == tmp_path
    with pytest.raises(CheckpointError, match="hparams.hidden_dim=8 but 16 was requested"):
        ensure_encoder("unused", "tiny", {**cfg, "hidden_dim": 16}, tmp_path, seed=0)
    with pytest.raises(CheckpointError, match="dataset='tiny' but 'lastfm'"):
        ensure_encoder("unused", "lastfm", cfg, tmp_path, seed=0)
    with pytest.raises(CheckpointError, match="seed=0 but 1"):
        ensure_encoder("unused", "tiny", cfg, tmp_path, seed=1)


def test_ensure_encoder_refuses_a_cache_trained_with_another_recipe(tmp_path, monkeypatch):
    """A cached encoder selected on another metric (an older recipe) must not silently steer new runs."""
    import ilora.encoders.train as train_mod

    monkeypatch.setattr(train_mod, "train_encoder", lambda **_: (_ for _ in ()).throw(AssertionError("retrained")))
    recipe = {"lr": 0.003, "weight_decay": 0.0, "batch_size": 512, "max_epochs": 40, "patience": 5,
              "monitor": "val/hr@1"}
    save_encoder(build_encoder("sasrec", 30, hidden_dim=8), tmp_path, dataset="tiny", train={"seed": 0, **recipe})
    cfg = {"name": "sasrec", "hidden_dim": 8, "train": {**recipe, "monitor": "val/mrr"}}
    with pytest.raises(CheckpointError, match="train.monitor='val/hr@1' but 'val/mrr' was requested"):
        ensure_encoder("unused", "tiny", cfg, tmp_path, seed=0)
    with pytest.raises(CheckpointError, match="train.max_epochs=40 but 8 was requested"):
        ensure_encoder("unused", "tiny", {**cfg, "train": {**recipe, "max_epochs": 8}}, tmp_path, seed=0)
    assert ensure_encoder("unused", "tiny", {**cfg, "train": recipe}, tmp_path, seed=0) == tmp_path
