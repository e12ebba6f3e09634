"""A checkpoint trained on a local HF backbone evaluates where that backbone lives at another path."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ilora.backbones import load_backbone
from ilora.cli.eval import evaluate
from ilora.cli.train import train
from ilora.errors import CheckpointError


def test_eval_with_the_backbone_moved_reproduces_the_test_metrics(train_cfg, compose_cfg, shared_cache, tmp_path):
    model, tokenizer = load_backbone("tiny_random", cache_dir=shared_cache / "backbones" / "smollm2_135m")
    here = tmp_path / "machine_a" / "tiny-hf"
    model.save_pretrained(here)
    tokenizer.save_pretrained(here)
    cfg = train_cfg("backbone=hf", f"backbone.path={here}", "backbone.dtype=float32", "test_ckpt=last")
    metrics, _ = train(cfg)
    elsewhere = tmp_path / "machine_b" / "models" / "tiny-hf"
    shutil.copytree(here, elsewhere)
    shutil.rmtree(here)  # the training machine's path no longer exists
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    eval_cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", "logger=none", "trainer.precision=32-true",
                                    f"+override.backbone.path={elsewhere}"], tmp_path / "eval")
    eval_metrics, _ = evaluate(eval_cfg)
    for key in ("test/rank_hr@1", "test/rank_mrr", "test/rank_ndcg@5"):
        assert eval_metrics[key] == pytest.approx(metrics[key], abs=1e-6), key
    # what does define the model is still compared: another adapter rank does not fit
    bad = compose_cfg("eval", [f"ckpt_path={ckpt}", "logger=none", f"+override.backbone.path={elsewhere}",
                               "+override.adapter.rank=16"], tmp_path / "eval_bad")
    with pytest.raises(CheckpointError, match="adapter.rank=8"):
        evaluate(bad)
