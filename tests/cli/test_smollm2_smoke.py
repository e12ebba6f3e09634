"""The real embedded SmolLM2-135M on real MovieLens: one training step, then ranking + generation for 4 users.

In the fast suite on purpose (about 1.5 minutes on an idle 2-core CPU from a fresh clone: a one-epoch SASRec,
the one-time GGUF dequantisation, one step, 4 users): the real weights must stay on the tested path."""

from __future__ import annotations

import json
from pathlib import Path

from ilora.cli import project_root
from ilora.cli.train import train


def test_smollm2_trains_one_step_and_ranks_four_users(compose_cfg, shared_cache, encoder_cache, tmp_path):
    cfg = compose_cfg(
        "train",
        [
            "backbone=smollm2_135m",
            f"backbone.cache_dir={shared_cache}/backbones/smollm2_135m",
            "logger=csv",
            "trainer.max_steps=1",
            "trainer.limit_train_batches=1",
            "trainer.accumulate_grad_batches=1",
            "trainer.limit_val_batches=0",
            "trainer.enable_progress_bar=false",
            f"data.dir={project_root()}/data/movielens",
            "data.batch_size=2",
            "data.eval_batch_size=4",
            "data.limit_train_examples=8",
            "data.limit_val_examples=4",
            "data.limit_test_examples=4",
            f"paths.encoder_dir={encoder_cache}",
            "encoder.hidden_dim=16",
            "encoder.train.max_epochs=1",
            "model.evaluation.max_new_tokens=24",
            "model.compile=false",  # compilation runs in the suite on the tiny backbone only (tests/adapters)
        ],
        tmp_path / "run",
    )
    metrics, objects = train(cfg)
    model = objects["model"]
    assert type(model.backbone).__name__ == "LlamaForCausalLM"
    assert model.backbone.config.num_hidden_layers == 30  # the real 135M model, not the tiny one
    assert objects["trainer"].global_step == 1
    assert metrics["test/num_examples"] == 4
    rows = [json.loads(line) for line in (Path(cfg.paths.output_dir) / "predictions_test.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert len(row["scores"]) == 20 and all(s < 0 for s in row["scores"])  # log-likelihoods
        assert len(set(row["scores"])) > 1  # the model tells candidates apart
        assert isinstance(row["generated"], str) and "\n" not in row["generated"]
        assert abs(sum(row["gate"]) - 1) < 1e-5 and len(row["gate"]) == 4
