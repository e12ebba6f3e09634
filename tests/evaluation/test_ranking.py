"""KV-shared candidate scores equal uncached full-sequence scores (prompt + candidate, one at a time)."""

import pytest
import torch

from ilora.evaluation.ranking import score_candidates


def full_sequence_score(model, prompt_embeds, cand_ids):
    """Reference: log p(candidate | prompt) from one uncached forward over the concatenation."""
    cand = torch.tensor(cand_ids)
    x = torch.cat([prompt_embeds, model.get_input_embeddings()(cand)])[None]
    logp = model(inputs_embeds=x).logits[0].float().log_softmax(-1)  # [T + L, V]
    start = prompt_embeds.shape[0]
    return logp[start - 1: start - 1 + len(cand_ids)].gather(-1, cand[:, None]).sum().item()


@pytest.fixture
def case(tiny, pad):
    """3 users with prompts of 5..17 tokens, 4 candidates of 1..5 tokens each (right-padded)."""
    model, tok = tiny
    left_pad, right_pad = pad
    texts = ["You watched Alien and Heat.", "History: Toy Story (1995)\nPick one:", "Hi"]
    prompts = [tok(t)["input_ids"] + [5, 7, 11][: i + 1] for i, t in enumerate(texts)]
    g = torch.Generator().manual_seed(1)
    cands = [[torch.randint(10, 4000, (n,), generator=g).tolist() for n in lens]
             for lens in ([3, 1, 5, 2], [2, 4, 4, 1], [5, 5, 3, 2])]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    embeds = model.get_input_embeddings()(ids)
    cand_ids, cand_mask = right_pad(cands, tok.pad_token_id)
    return dict(inputs_embeds=embeds, attention_mask=mask, cand_input_ids=cand_ids,
                cand_attention_mask=cand_mask), prompts, cands


@pytest.mark.parametrize("method", ["packed", "repeat"])
def test_scores_equal_full_sequence(tiny, case, method):
    model, _ = tiny
    inputs, prompts, cands = case
    scores = score_candidates(model, **inputs, method=method)
    with torch.no_grad():
        ref = torch.tensor([[full_sequence_score(model, inputs["inputs_embeds"][b, -len(p):], c)
                             for c in cands[b]] for b, p in enumerate(prompts)])
    assert scores.shape == (3, 4)
    torch.testing.assert_close(scores, ref, atol=1e-4, rtol=1e-5)
    assert torch.equal(scores.argmax(-1), ref.argmax(-1))


def test_packed_mask_also_works_with_eager_attention(tiny, case, monkeypatch):
    """The 4D mask is additive (0 / dtype min), which eager attention adds and SDPA accepts alike."""
    model, _ = tiny
    inputs, _, _ = case
    sdpa = score_candidates(model, **inputs)
    monkeypatch.setattr(model.config, "_attn_implementation", "eager")
    torch.testing.assert_close(score_candidates(model, **inputs), sdpa, atol=1e-4, rtol=1e-5)


def test_length_normalize_is_mean_per_token(tiny, case):
    model, _ = tiny
    inputs, _, cands = case
    total = score_candidates(model, **inputs)
    mean = score_candidates(model, **inputs, length_normalize=True)
    lengths = torch.tensor([[len(c) for c in row] for row in cands], dtype=torch.float32)
    torch.testing.assert_close(mean, total / lengths)


def test_methods_agree_and_prompt_padding_does_not_matter(tiny, case):
    """Extra left padding on every prompt changes nothing (positions restart at each row's first token)."""
    model, tok = tiny
    inputs, _, _ = case
    packed = score_candidates(model, **inputs)
    pad = torch.full((3, 4), tok.pad_token_id)
    more = dict(inputs, attention_mask=torch.cat([torch.zeros(3, 4, dtype=torch.long), inputs["attention_mask"]], 1),
                inputs_embeds=torch.cat([model.get_input_embeddings()(pad), inputs["inputs_embeds"]], 1))
    torch.testing.assert_close(score_candidates(model, **more), packed, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(score_candidates(model, **inputs, method="repeat"), packed, atol=1e-4, rtol=1e-5)


def test_bad_shapes_and_method_are_rejected(tiny, case):
    model, _ = tiny
    inputs, _, _ = case
    with pytest.raises(ValueError, match="cand_input_ids"):
        score_candidates(model, **dict(inputs, cand_attention_mask=inputs["cand_attention_mask"][:, :2]))
    with pytest.raises(ValueError, match="method"):
        score_candidates(model, **inputs, method="beam")
