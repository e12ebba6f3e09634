"""`train(cfg)` end to end on a tiny random Llama: fit, checkpoints, test, metrics.json, eval round trip."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from ilora.cli.eval import evaluate
from ilora.cli.train import train


def test_train_writes_metrics_checkpoints_and_predictions(train_cfg):
    cfg = train_cfg()
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    on_disk = json.loads((out / "metrics.json").read_text())
    for key in ("test/rank_hr@1", "test/rank_ndcg@5", "test/gen_valid_ratio", "test/gen_hr@1_all", "wall_time_s"):
        assert key in on_disk, key
    assert on_disk["test/num_examples"] == 6
    assert json.loads((out / "status.json").read_text())["status"] == "completed"
    assert (out / "checkpoints" / "last.ckpt").is_file()
    lines = (out / "predictions_test.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len(json.loads(lines[0])["scores"]) == 5
    assert objects["trainer"].global_step == 4


def test_checkpoint_holds_only_trainable_tensors(train_cfg):
    cfg = train_cfg()
    _, objects = train(cfg)
    model = objects["model"]
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    # the rule written out: adapter matrices, the projector and the gate, nothing else
    rule = {k for k in model.state_dict() if k.endswith((".lora_A", ".lora_B")) or k.startswith(("projector.", "gate."))}
    assert any(k.endswith(".lora_A") for k in rule) and any(k.startswith("gate.") for k in rule)
    assert set(ckpt["state_dict"]) == rule
    assert not any(k.startswith(("encoder.", "backbone.model.embed_tokens")) for k in ckpt["state_dict"])


def _test_scores(run_dir) -> torch.Tensor:
    lines = (Path(run_dir) / "predictions_test.jsonl").read_text().splitlines()
    return torch.tensor([json.loads(line)["scores"] for line in lines])


@pytest.mark.parametrize("which", ["last", "best"])
def test_eval_from_checkpoint_reproduces_train_time_test_metrics(which, train_cfg, compose_cfg, tmp_path):
    # lr 1e-2 so 4 steps move the scores far from an untrained model's (a load that kept the fresh init fails)
    cfg = train_cfg(f"test_ckpt={which}", "model.optimizer.lr=0.01", "model.scheduler.warmup_ratio=0")
    metrics, objects = train(cfg)
    if which == "last":
        ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    else:  # the model checkpoint: weights only, what the post-fit test used
        (ckpt,) = (Path(cfg.paths.output_dir) / "checkpoints").glob("best-*.ckpt")
        stored = torch.load(ckpt, weights_only=True)
        assert "optimizer_states" not in stored and set(stored["state_dict"]) == objects["model"].trainable_state_keys()
    eval_cfg = compose_cfg(
        "eval", [f"ckpt_path={ckpt}", "trainer.precision=32-true", "logger=none"], tmp_path / "eval"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eval_metrics, _ = evaluate(eval_cfg)
    about_keys = [str(w.message) for w in caught if "key" in str(w.message).lower() or "state" in str(w.message).lower()]
    assert not about_keys, about_keys  # loading re-attaches the adapters to the frozen backbone without complaints
    for key in ("test/rank_hr@1", "test/rank_mrr", "test/gen_valid_ratio", "test/gen_hr@1_all"):
        assert eval_metrics[key] == pytest.approx(metrics[key], abs=1e-6), key
    trained, evaluated = _test_scores(cfg.paths.output_dir), _test_scores(tmp_path / "eval")
    torch.testing.assert_close(evaluated, trained, atol=1e-4, rtol=0)
    untrained_cfg = train_cfg("trainer.max_steps=0", run="untrained")
    train(untrained_cfg)
    untrained = _test_scores(untrained_cfg.paths.output_dir)
    assert (trained - untrained).abs().max() > 0.05  # the per-candidate scores moved in training


def test_adapter_none_is_zero_shot_text_only_and_untrained(train_cfg):
    metrics, objects = train(train_cfg("adapter=none"))
    assert metrics["trainable_parameters"] == 0 and objects["trainer"].global_step == 0
    assert objects["datamodule"].hparams.text_only
    assert metrics["test/num_examples"] == 6 and "test/rank_hr@1" in metrics and "test/gate_entropy" not in metrics


def test_lora_k1_trains_without_a_gate(train_cfg):
    metrics, objects = train(train_cfg("adapter=lora"))
    assert objects["model"].gate is None and objects["trainer"].global_step == 4
    assert "test/rank_hr@1" in metrics and "test/gate_entropy" not in metrics


def test_last_checkpoint_holds_the_final_step_between_periodic_saves(train_cfg):
    """Periodic last.ckpt every 2 steps, 3 steps run: the file must hold step 3's weights, not step 2's."""
    cfg = train_cfg("trainer.max_steps=3", "trainer.limit_train_batches=3")
    _, objects = train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    final = {k: v for k, v in objects["model"].state_dict().items() if k in ckpt["state_dict"]}
    assert final and all(torch.equal(final[k], ckpt["state_dict"][k]) for k in final)


def test_a_run_that_reached_max_steps_resumes_mid_epoch_with_a_larger_budget(train_cfg):
    """The final last.ckpt keeps the mid-epoch loop state: ckpt_path=<it> with more steps trains on."""
    first = train_cfg("trainer.max_steps=2", "callbacks.last_checkpoint.every_n_train_steps=100", run="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2
    resumed = train_cfg(f"ckpt_path={last}", "trainer.max_steps=3", run="resumed")
    _, objects = train(resumed)
    assert objects["trainer"].global_step == 3
    assert torch.load(Path(resumed.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 3


def test_random_gate_trains_end_to_end_and_routes_by_example_row(train_cfg):
    metrics, objects = train(train_cfg("gate=random"))
    gate = objects["model"].gate
    assert objects["trainer"].global_step == 4 and gate.num_users > 1 and "test/gate_entropy" in metrics
    records = [json.loads(line) for line in (Path(objects["trainer"].default_root_dir) / "predictions_test.jsonl")
               .read_text().splitlines()]
    gates = torch.tensor([r["gate"] for r in records])
    expected = gate(torch.zeros(len(records), gate.in_dim), user_index=torch.tensor([r["index"] for r in records]) % gate.num_users)
    torch.testing.assert_close(gates, expected.detach(), atol=1e-6, rtol=0)  # the row's embedding, not the state


@pytest.mark.parametrize("loss", ["answer", "rank"])
def test_gradient_checkpointing_trains_to_the_same_weights(train_cfg, loss):
    """Recomputing activations in backward changes memory, not the result (dropout off: same random stream).
    With the rank loss this also compares its two candidate passes: "split" (prompt, then the candidates on its
    differentiable KV cache) without checkpointing, "joint" (one masked pass) with it."""
    plain = train(train_cfg("adapter.dropout=0", f"model.loss={loss}", run="plain"))[1]["model"]
    checkpointed = train(train_cfg("adapter.dropout=0", f"model.loss={loss}", "+backbone.gradient_checkpointing=true",
                                   run="ckpt"))[1]["model"]
    assert checkpointed.backbone.is_gradient_checkpointing and not plain.backbone.is_gradient_checkpointing
    a = {k: v for k, v in plain.state_dict().items() if k in plain.trainable_state_keys()}
    b = {k: v for k, v in checkpointed.state_dict().items() if k in a}
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in a.items())  # training moved the adapters
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-5, rtol=1e-4)


def test_eval_on_another_dataset_of_the_same_catalogue_keeps_the_trained_encoder(
        train_cfg, compose_cfg, tmp_path, tiny_data_dir, encoder_cache):
    """`ilora-eval data=<other>`: a copy of the data under another name scores exactly as the training data did."""
    import shutil

    from ilora.data.datasets import load_dataset, write_dataset

    cfg = train_cfg("test_ckpt=last")
    metrics, _ = train(cfg)
    data = load_dataset(tiny_data_dir)
    other = tmp_path / "tiny_again"
    shutil.copytree(tiny_data_dir, other)
    meta = json.loads((other / "meta.json").read_text())
    write_dataset(other, name="tiny_again", domain=data.domain, titles=data.titles,
                  splits={s: __import__("pandas").read_parquet(tiny_data_dir / f"{s}.parquet") for s in data.splits},
                  source=meta["source"], terms=meta["terms"], notes=meta.get("notes", []))
    ckpt = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
    eval_cfg = compose_cfg("eval", [f"ckpt_path={ckpt}", "logger=none", "trainer.precision=32-true",
                                    "data=movielens_windows", f"data.dir={other}", "data.name=tiny_again",
                                    "data.encoder_data=null", "data.num_candidates=5", "data.limit_test_examples=6",
                                    "data.eval_batch_size=4"], tmp_path / "eval_other")
    eval_metrics, parts = evaluate(eval_cfg)
    assert parts["datamodule"].hparams.name == "tiny_again"
    assert not (encoder_cache / "tiny_again").exists()  # the checkpoint's own encoder, not a new one
    for key in ("test/rank_hr@1", "test/rank_mrr", "test/rank_ndcg@5"):
        assert eval_metrics[key] == pytest.approx(metrics[key], abs=1e-6), key


def test_validation_every_n_batches_writes_a_learning_curve_that_report_plots(train_cfg):
    from ilora.report import build_report

    cfg = train_cfg("trainer.max_steps=4", "trainer.val_check_interval=2", "data.limit_val_examples=3")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [(r["step"], r["train_examples"]) for r in curve] == [(2, 8), (4, 16)]  # batches of 4
    assert all(r["val/num_examples"] == 3 and 0 <= r["val/rank_hr@1"] <= 1 for r in curve)
    report = build_report([out], out_dir=out / "report")
    assert report.curves_path is not None and report.curves_path.stat().st_size > 0


def test_a_resume_keeps_the_best_checkpoint_choice(train_cfg, monkeypatch):
    """The resumed run writes into a new directory; a worse validation after the resume must not become "best",
    test_ckpt=best tests the original run's best, and the original's file is never deleted (issue 23)."""
    import ilora.recommender as rec

    real = rec.summarize

    def scored(value):
        def fake(records, prefix=""):
            metrics = real(records, prefix)
            if prefix == "val/":
                metrics["val/rank_hr@1"] = value
            return metrics
        return fake

    # validations every 2 steps; last.ckpt every 4 (written before that step's validation: it carries step 2's best)
    common = ["trainer.val_check_interval=2", "callbacks.last_checkpoint.every_n_train_steps=4",
              "trainer.limit_train_batches=12"]
    monkeypatch.setattr(rec, "summarize", scored(0.9))
    first = train_cfg("trainer.max_steps=4", *common, run="first")
    _, objects = train(first)
    best = Path(objects["trainer"].checkpoint_callback.best_model_path)
    assert best.parent == Path(first.paths.output_dir) / "checkpoints" and best.is_file()
    monkeypatch.setattr(rec, "summarize", scored(0.1))
    resumed = train_cfg(f"ckpt_path={Path(first.paths.output_dir) / 'checkpoints' / 'last.ckpt'}",
                        "trainer.max_steps=6", *common, run="resumed")
    _, objects = train(resumed)
    callback = objects["trainer"].checkpoint_callback
    assert Path(callback.best_model_path) == best and float(callback.best_model_score) == pytest.approx(0.9)
    assert best.is_file() and not list((Path(resumed.paths.output_dir) / "checkpoints").glob("best-*.ckpt"))
    monkeypatch.setattr(rec, "summarize", scored(0.95))  # a better one after another resume replaces it here only
    again = train_cfg(f"ckpt_path={Path(resumed.paths.output_dir) / 'checkpoints' / 'last.ckpt'}",
                      "trainer.max_steps=8", *common, run="again")
    _, objects = train(again)
    assert Path(objects["trainer"].checkpoint_callback.best_model_path).parent == (
        Path(again.paths.output_dir) / "checkpoints")
    assert best.is_file()  # the first run's file stays
