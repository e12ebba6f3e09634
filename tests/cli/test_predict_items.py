"""ilora-predict names items unambiguously, resolves mixed histories, and serves GPU-trained checkpoints on a CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ilora.checkpoints import read_checkpoint
from ilora.cli.predict import predict, resolve_items
from ilora.cli.train import train
from ilora.data.datasets import load_dataset
from ilora.errors import DataError

TITLES = ["Heat", "311", "Fargo", "2002", "Se7en", "3"]


def test_strings_are_titles_and_id_prefix_or_integers_are_ids():
    assert resolve_items(["311", "2002", "3"], TITLES, "history") == [1, 3, 5]
    assert resolve_items(["id:3", "ID: 1", 0, "fargo"], TITLES, "history") == [3, 1, 0, 2]


def test_a_number_that_is_also_a_title_is_refused_not_guessed():
    with pytest.raises(DataError, match=r"history: 3 is ambiguous: item id 3 \('2002'\) or the title '3' \(id 5\)"):
        resolve_items([3], TITLES, "history")
    with pytest.raises(DataError, match="unknown item id 9"):
        resolve_items(["id:9"], TITLES, "candidates")
    with pytest.raises(DataError, match="'id:x' is not an item id"):
        resolve_items(["id:x"], TITLES, "history")


def test_lastfm_numeric_titles_can_be_named():
    titles = load_dataset("lastfm").titles
    for title in ("311", "3", "2002"):
        (item,) = resolve_items([title], titles, "history")
        assert titles[item] == title and item != int(title)
    with pytest.raises(DataError, match="ambiguous"):
        resolve_items([311], titles, "history")


def _trained(train_cfg):
    cfg = train_cfg()
    _, objects = train(cfg)
    return Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", objects


def test_mixed_history_resolves_to_the_intended_ids_and_scores_match_a_direct_batch(train_cfg, compose_cfg, tmp_path):
    ckpt, objects = _trained(train_cfg)
    titles, model = objects["datamodule"].titles, objects["model"].eval()
    given = compose_cfg("predict", [f"ckpt_path={ckpt}", f"history={json.dumps([titles[3], 'id:7', 11])}",
                                    "candidates=[1,2,4,5,6]", "top_k=5"], tmp_path / "predict")
    ranked, _ = predict(given)
    saved = json.loads((tmp_path / "predict" / "predictions.json").read_text())
    assert saved["history"] == [3, 7, 11] and saved["candidates"] == [1, 2, 4, 5, 6]
    # the same user scored directly by the trained module (weights as trained, no checkpoint round trip)
    batch = objects["datamodule"].build_inference_batch([[3, 7, 11]], [[1, 2, 4, 5, 6]])
    direct = dict(zip([1, 2, 4, 5, 6], model.evaluate_batch(batch, generate=False)[0]["scores"]))
    assert [r["item_id"] for r in ranked] == sorted(direct, key=lambda i: -direct[i])
    for row in ranked:
        assert row["score"] == pytest.approx(direct[row["item_id"]], abs=1e-4)


def test_predict_serves_a_gpu_trained_checkpoint_on_cpu(train_cfg, compose_cfg, tmp_path):
    ckpt, _ = _trained(train_cfg)
    checkpoint = read_checkpoint(ckpt)
    run_config = checkpoint["hyper_parameters"]["run_config"]
    run_config["trainer"] = {**run_config["trainer"], "accelerator": "gpu", "precision": "bf16-mixed"}
    gpu_ckpt = tmp_path / "gpu_trained.ckpt"
    torch.save(checkpoint, gpu_ckpt)
    cfg = compose_cfg("predict", [f"ckpt_path={gpu_ckpt}", "history=[id:3,id:7]", "candidates=[1,2,4]"],
                      tmp_path / "predict_gpu")
    ranked, _ = predict(cfg)
    assert sorted(r["item_id"] for r in ranked) == [1, 2, 4]
