"""ilora-predict on a trained tiny checkpoint, and a W&B offline run with the keys researchers watch."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from ilora.cli.predict import predict
from ilora.cli.train import train
from ilora.errors import DataError


def _train_tiny(train_cfg, *extra):
    cfg = train_cfg(*extra)
    metrics, objects = train(cfg)
    return cfg, metrics, objects


def test_wandb_offline_run_has_metrics_gate_heatmap_and_resumable_id(train_cfg, wandb_keys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg, _, _ = _train_tiny(train_cfg, "logger=wandb")
    runs = list((Path(cfg.paths.output_dir) / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_file = next(runs[0].glob("run-*.wandb"))
    deadline = time.time() + 30  # wandb-core appends the last records asynchronously after finish() returns
    while "test/rank_hr@1" not in (keys := wandb_keys(run_file)) and time.time() < deadline:
        time.sleep(0.5)
    for key in ("train/loss", "train/gate_entropy", "train/expert_0_weight", "val/rank_hr@1", "val/gen_valid_ratio",
                "val/expert_0_top_share", "test/rank_hr@1", "test/gen_hr@1_valid"):
        assert key in keys, key
    assert {"val/expert_utilisation/_type", "val/gate_heatmap/_type"} <= keys  # histogram and image media
    assert list(runs[0].glob("files/media/images/val/gate_heatmap_*.png"))
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["wandb_run_id"] == runs[0].name.rsplit("-", 1)[-1]


def test_predict_ranks_given_candidates_and_catalogue_shortlist(train_cfg, compose_cfg, tmp_path):
    cfg, _, objects = _train_tiny(train_cfg)
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    titles = objects["datamodule"].titles
    history = [titles[3], "id:7", 11]
    given = compose_cfg(
        "predict", [f"ckpt_path={ckpt}", f"history={json.dumps(history)}", "candidates=[1,2,4,5,6]", "top_k=3"],
        tmp_path / "predict",
    )
    ranked, result = predict(given)
    assert [r["rank"] for r in ranked] == [1, 2, 3]
    assert {r["item_id"] for r in ranked} <= {1, 2, 4, 5, 6}
    assert ranked[0]["score"] >= ranked[1]["score"] >= ranked[2]["score"]

    catalogue = compose_cfg(
        "predict", [f"ckpt_path={ckpt}", "history=[3,7,11]", "shortlist=6", "top_k=6"], tmp_path / "predict2"
    )
    ranked, _ = predict(catalogue)
    assert len(ranked) == 6 and not {3, 7, 11} & {r["item_id"] for r in ranked}
    saved = json.loads((tmp_path / "predict2" / "predictions.json").read_text())
    assert [r["item_id"] for r in saved["ranked"]] == [r["item_id"] for r in ranked]

    unknown = compose_cfg("predict", [f"ckpt_path={ckpt}", "history=[No Such Title]"], tmp_path / "predict3")
    with pytest.raises(DataError, match="unknown title 'No Such Title'"):
        predict(unknown)
