"""Greedy generation stops at the first line; LLaRA parsing and metrics on golden cases."""

import copy

import pytest
import torch
from torch import nn

from ilora.evaluation.generation import (
    StopAtFirstLine,
    generate_answers,
    generation_metrics,
    line_tables,
    parse_choice,
)

TITLES = ["Alien", "Aliens", "Heat (1995)", "Toy Story (1995)"]


@pytest.mark.parametrize("text, expected", [
    ("Heat (1995)", 2),
    ("  heat (1995) is my guess", 2),            # case-insensitive substring, surrounding text allowed
    ("Alien", 0),                                 # the shorter title alone is valid
    ("Aliens", -1),                               # "Aliens" contains "Alien" too: two titles -> invalid (LLaRA)
    ("Heat (1995) or Toy Story (1995)", -1),      # two titles -> invalid
    ("Casino (1995)", -1),                        # none
    ("\n\nToy Story (1995)\nHeat (1995)", 3),     # leading blank lines stripped, only the first line counts
    ("Toy Story\nToy Story (1995)", -1),          # second line ignored
])
def test_parse_choice_golden(text, expected):
    assert parse_choice(text, TITLES) == expected


def test_parse_choice_duplicate_titles_are_invalid_and_titles_are_stripped():
    assert parse_choice("Heat", ["Heat", "Casino", " heat "]) == -1
    assert parse_choice("casino", ["Heat", " Casino "]) == 1


def test_generation_metrics_llara_hr1_is_correct_over_valid():
    m = generation_metrics(torch.tensor([0, -1, 2, 1, -1]), torch.tensor([0, 1, 2, 2, 3]))
    assert m["valid_ratio"] == pytest.approx(3 / 5)
    assert m["hr@1_valid"] == pytest.approx(2 / 3)
    assert m["hr@1_all"] == pytest.approx(2 / 5)
    assert generation_metrics([-1, -1], [0, 1]) == {"valid_ratio": 0.0, "hr@1_valid": 0.0, "hr@1_all": 0.0}
    with pytest.raises(ValueError):
        generation_metrics([0, 1], [0])


def test_stop_criterion_needs_text_before_the_newline(tiny):
    _, tok = tiny
    newline, word = tok.encode("\n")[0], tok.encode("Heat")[0]
    stop = StopAtFirstLine(line_tables(tok))
    ids = torch.tensor([[newline, newline], [word, newline], [newline, word], [word, word]])
    assert stop(ids, None).tolist() == [False, True, False, False]


def bigram_model(model, word: int, newline: int):
    """A copy of the tiny model that greedily emits word, newline, word, newline, ... after any prompt.

    Layer outputs are zeroed so the last hidden state is the normalised embedding of the last token; the head
    then maps `word` -> `newline` (logit 20) and anything else -> `word` (bias 5).
    """
    forced = copy.deepcopy(model)
    with torch.no_grad():
        for layer in forced.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        h_word = forced.model.norm(forced.get_input_embeddings().weight[word])  # [D]
        head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
        head.weight.zero_()
        head.bias.zero_()
        head.weight[newline] = h_word * 20.0 / h_word.square().sum()
        head.bias[word] = 5.0
    forced.lm_head = head
    return forced


def test_generate_stops_at_the_first_line(tiny):
    model, tok = tiny
    word, newline = tok.encode(" Heat")[0], tok.encode("\n")[0]
    forced = bigram_model(model, word, newline)
    batch = tok(["Pick one:", "History: Toy Story (1995)\nPick one:"], return_tensors="pt", padding=True,
                padding_side="left")
    embeds = forced.get_input_embeddings()(batch["input_ids"])
    kw = dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=6)
    full = generate_answers(forced, tok, **kw, stop_at_newline=False)
    assert full == ["Heat\n Heat\n Heat"] * 2  # the construction works: three lines without the stop
    steps = []
    forced.lm_head.register_forward_hook(lambda *_: steps.append(1))
    assert generate_answers(forced, tok, **kw) == ["Heat"] * 2
    assert len(steps) == 2  # generation itself stopped after "Heat" + newline (not only the decoded text)


def test_generate_greedy_matches_unstopped_prefix(tiny):
    """Row-wise: the stopped answer is the first line of the same greedy run without the stop."""
    model, tok = tiny
    model = copy.deepcopy(model)
    with torch.no_grad():  # a newline likelier than in the random model: each row breaks at its own position
        model.lm_head.weight[tok.encode("\n")[0]] *= 3.0
    batch = tok(["You watched Alien.", "Hi", "History: Heat, Fargo. Next:"], return_tensors="pt", padding=True,
                padding_side="left")
    embeds = model.get_input_embeddings()(batch["input_ids"])
    kw = dict(inputs_embeds=embeds, attention_mask=batch["attention_mask"], max_new_tokens=12)
    stopped = generate_answers(model, tok, **kw)
    full = generate_answers(model, tok, **kw, stop_at_newline=False)
    assert all("\n" in t.strip() for t in full[:2]), full  # the stop has something to cut
    assert len({len(t) for t in stopped}) == 3 and all(s and s != f for s, f in zip(stopped[:2], full))
    assert stopped == [t.strip().split("\n")[0] for t in full]


@pytest.mark.parametrize("experts", [1, 2])
def test_generation_from_the_ranking_cache_equals_a_fresh_prompt_encoding(tiny, pad, experts):
    """Ranking's prompt KV cache, cropped to T-1 tokens, serves generation: same greedy tokens, one encoding."""
    from ilora.adapters import apply_moe_lora, gate_context
    from ilora.evaluation.ranking import score_candidates

    model, tok = tiny
    model = copy.deepcopy(model)
    apply_moe_lora(model, rank=4, num_experts=experts, alpha=8)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    left, right = pad
    ids, mask = left([[5, 17, 30, 8, 99], [44, 7], [3, 3, 9, 12]], tok.pad_token_id)
    cand, cand_mask = right([[[11, 12], [13]], [[14, 15, 16], [17]], [[18], [19, 20]]], tok.pad_token_id)
    embeds = model.get_input_embeddings()(ids)
    gate = torch.softmax(torch.randn(3, experts), -1)
    kw = dict(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=8, stop_at_newline=False)
    with gate_context(model, gate):
        fresh = generate_answers(model, tok, **kw)
        scores, cache = score_candidates(model, inputs_embeds=embeds, attention_mask=mask, cand_input_ids=cand,
                                         cand_attention_mask=cand_mask, keep_prompt_cache=True)
        assert cache.get_seq_length() == ids.shape[1] - 1
        torch.testing.assert_close(scores, score_candidates(model, inputs_embeds=embeds, attention_mask=mask,
                                                            cand_input_ids=cand, cand_attention_mask=cand_mask))
        steps = []
        hook = model.get_decoder().register_forward_hook(lambda m, a, kw_, out: steps.append(kw_), with_kwargs=True)
        shared = generate_answers(model, tok, **kw, prompt_cache=cache)
        hook.remove()
    assert shared == fresh and any(fresh)
    first = steps[0].get("inputs_embeds")
    assert first is not None and first.shape[1] == 1  # only the last prompt token was encoded again
