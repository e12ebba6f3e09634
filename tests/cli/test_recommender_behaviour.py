"""The LightningModule's pieces against independent references: loss, slots, gates, curriculum, aux loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from ilora.adapters.gates import load_balancing_loss
from ilora.cli.components import build_all


@pytest.fixture
def parts(train_cfg):
    built = build_all(train_cfg("data.batch_size=4"))
    model, datamodule = built["model"], built["datamodule"]
    datamodule.setup()
    datamodule.set_epoch(0)
    model.eval()  # adapter dropout off: the references below must see the same function
    with torch.no_grad():  # B starts at zero: give the adapters something to do
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.05)
    return model, datamodule, next(iter(datamodule.train_dataloader()))


def test_answer_loss_equals_the_backbones_own_labels_loss(parts):
    model, _, batch = parts
    embeds, gate = model.embed(batch), model.gate_weights(batch)
    ours = model.answer_loss(batch, embeds, gate)
    with model.gated(gate):
        reference = model.backbone(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                                   labels=batch["labels"]).loss
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_slot_injection_writes_each_projected_item_at_its_slot(parts):
    model, _, batch = parts
    assert batch["slot_pos"].numel() > 0
    embeds = model.embed(batch)
    tokens = model.backbone.get_input_embeddings()(batch["input_ids"])
    is_slot = torch.zeros(batch["input_ids"].shape, dtype=torch.bool)
    for row, pos, item in zip(batch["slot_batch"].tolist(), batch["slot_pos"].tolist(), batch["slot_items"].tolist()):
        is_slot[row, pos] = True
        vector = model.projector(model.encoder.item_embeddings(torch.tensor([item])))[0]
        torch.testing.assert_close(embeds[row, pos], vector)
    torch.testing.assert_close(embeds[~is_slot], tokens[~is_slot])


def test_gates_differ_between_users_and_agree_for_the_same_history(parts):
    model, _, batch = parts
    gate = model.gate_weights(batch)
    histories = [tuple(h[:n].tolist()) for h, n in zip(batch["history"], batch["history_len"])]
    assert len(set(histories)) == len(histories) > 1
    assert torch.cdist(gate, gate)[~torch.eye(len(gate), dtype=torch.bool)].min() > 1e-4
    twice = {k: torch.cat([v, v]) if torch.is_tensor(v) and k in ("history", "history_len", "index") else v
             for k, v in batch.items()}
    torch.testing.assert_close(model.gate_weights(twice)[len(gate):], gate)


def test_aux_loss_adds_the_weighted_load_balancing_loss(parts):
    model, _, batch = parts
    model.log = lambda *args, **kwargs: None  # no trainer loop to log into here
    plain = model.training_step(batch, 0)
    model.aux_loss_weight = 0.5
    with_aux = model.training_step(batch, 0)
    expected = plain + 0.5 * load_balancing_loss(model.gate_weights(batch))
    torch.testing.assert_close(with_aux, expected)
    assert with_aux > plain


def test_curriculum_raises_the_hybrid_share_with_the_step(parts):
    model, datamodule, _ = parts
    model.curriculum = True
    shares = []
    for step in (0, 3, 10):
        model._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=10, datamodule=datamodule)
        model.on_train_batch_start(None, 0)
        shares.append(datamodule.hybrid_probability)
    assert shares == [0.0, 0.3, 1.0]
    collate, examples = datamodule.collators["train"], datamodule.datasets["train"]
    datamodule.hybrid_probability = 0.0
    assert not any(collate([examples[(0, i)]])["slot_pos"].numel() for i in range(8))
    datamodule.hybrid_probability = 1.0
    assert all(collate([examples[(0, i)]])["slot_pos"].numel() for i in range(8))
