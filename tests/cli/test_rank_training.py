"""model.loss=rank / answer+rank and data.prompt=history through the real module and CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ilora.cli.components import build_all
from ilora.cli.train import train


def _batch(parts, layout, rows):
    datamodule = parts["datamodule"]
    datamodule.hparams.train_layout = layout
    datamodule.collators = {}
    datamodule.setup()
    examples = datamodule.datasets["train"]
    return datamodule.collators["train"]([examples[(0, i)] for i in rows])


def test_answer_part_of_the_candidate_pass_equals_the_answer_loss(train_cfg):
    parts = build_all(train_cfg())
    model = parts["model"].eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    answer_batch, prompt_batch = _batch(parts, "answer", range(4)), _batch(parts, "prompt", range(4))
    assert torch.equal(answer_batch["candidates"], prompt_batch["candidates"])
    gate = model.gate_weights(prompt_batch)
    rank, answer = model.candidate_losses(prompt_batch, model.embed(prompt_batch), gate)
    reference = model.answer_loss(answer_batch, model.embed(answer_batch), model.gate_weights(answer_batch))
    torch.testing.assert_close(answer, reference, atol=1e-5, rtol=1e-5)
    assert rank > 0


@pytest.mark.parametrize("loss", ["rank", "answer+rank"])
def test_candidate_losses_train_end_to_end(loss, train_cfg):
    cfg = train_cfg(f"model.loss={loss}", "model.rank_weight=0.5")
    metrics, objects = train(cfg)
    assert objects["trainer"].global_step == 4 and "test/rank_hr@1" in metrics
    log = pd.read_csv(Path(cfg.paths.output_dir) / "csv" / "metrics.csv")
    rows = log.dropna(subset=["train/rank_loss"])
    assert len(rows) == 4
    expected = rows["train/rank_loss"] if loss == "rank" else rows["train/answer_loss"] + 0.5 * rows["train/rank_loss"]
    assert rows["train/loss"].to_numpy() == pytest.approx(expected.to_numpy(), rel=1e-5)


def test_history_prompt_lists_no_candidates_and_evaluation_ranks_only(train_cfg, capsys):
    cfg = train_cfg("data.prompt=history", "model.loss=rank")
    metrics, objects = train(cfg)
    assert "ranks only" in capsys.readouterr().out
    assert "test/rank_hr@1" in metrics and not any(k.startswith("test/gen_") for k in metrics)
    record = json.loads((Path(cfg.paths.output_dir) / "predictions_test.jsonl").read_text().splitlines()[0])
    assert "generated" not in record and len(record["scores"]) == 5
    history_len = objects["datamodule"].collators["test"]
    listed = build_all(train_cfg(run="llara"))["datamodule"]
    listed.setup()
    example = [listed.datasets["test"][0]]
    short = history_len(example)["attention_mask"].sum()
    full = listed.collators["test"](example)["attention_mask"].sum()
    assert short < full  # the candidates' titles are not in the prompt
