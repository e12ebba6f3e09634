"""The training candidate pass (one packed forward with gradients) against one full forward per candidate."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ilora.adapters import apply_moe_lora, gate_context
from ilora.evaluation.ranking import candidate_token_logprobs, score_candidates


@pytest.fixture
def gated(tiny):
    """The tiny Llama with a gated 2-expert MoE-LoRA on every projection, adapters non-zero."""
    model, tok = tiny
    model = copy.deepcopy(model)
    apply_moe_lora(model, rank=4, num_experts=2, alpha=8, dropout=0.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    return model, tok


def _case(model, tok, pad):
    left_pad, right_pad = pad
    prompts = [tok(t)["input_ids"] for t in ("You watched Alien and Heat.", "Hi", "History: Toy Story\nPick:")]
    g = torch.Generator().manual_seed(2)
    cands = [[torch.randint(10, 4000, (n,), generator=g).tolist() for n in lens]
             for lens in ([3, 1, 5, 2], [2, 4, 4, 1], [1, 5, 3, 2])]
    ids, mask = left_pad(prompts, tok.pad_token_id)
    cand_ids, cand_mask = right_pad(cands, tok.pad_token_id)
    return ids, mask, cand_ids, cand_mask, prompts, cands


def reference_scores(model, prompts, cands, gate):
    """[B, C] sums of log p(candidate token | prompt, earlier tokens), one unpadded full forward per candidate."""
    rows = []
    for b, (prompt, options) in enumerate(zip(prompts, cands)):
        row = []
        for cand in options:
            ids = torch.tensor(prompt + cand)[None]
            with gate_context(model, gate[b:b + 1]):
                logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
            start = len(prompt)
            row.append(logp[start - 1:start - 1 + len(cand)].gather(-1, torch.tensor(cand)[:, None]).sum())
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize("pad_to", [1, 16])  # packed rows padded to a multiple of 16 tokens: the same numbers
@pytest.mark.parametrize("method", ["split", "joint"])
@pytest.mark.parametrize("normalize", [False, True])
def test_rank_loss_and_its_gradients_equal_separate_full_forwards(gated, pad, normalize, method, pad_to):
    model, tok = gated
    ids, mask, cand_ids, cand_mask, prompts, cands = _case(model, tok, pad)
    gate = torch.softmax(torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), -1)
    target = torch.tensor([2, 0, 3])
    lengths = cand_mask.sum(-1).float()
    params = [p for n, p in model.named_parameters() if "lora_" in n]

    def loss_of(scores):
        return F.cross_entropy(scores / lengths if normalize else scores, target)

    with gate_context(model, gate):
        token_lp = candidate_token_logprobs(model, inputs_embeds=model.get_input_embeddings()(ids),
                                            attention_mask=mask, cand_input_ids=cand_ids,
                                            cand_attention_mask=cand_mask, method=method, pad_to=pad_to)
    packed = loss_of(token_lp.sum(-1))
    grads = torch.autograd.grad(packed, params)
    reference = reference_scores(model, prompts, cands, gate)
    torch.testing.assert_close(token_lp.sum(-1), reference, atol=1e-4, rtol=1e-4)
    ref_loss = loss_of(reference)
    ref_grads = torch.autograd.grad(ref_loss, params)
    torch.testing.assert_close(packed, ref_loss, atol=1e-5, rtol=1e-5)
    assert sum(g.abs().sum() for g in ref_grads) > 0
    for mine, theirs in zip(grads, ref_grads):
        torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-3)  # fp32 summation-order noise
    with torch.no_grad(), gate_context(model, gate):  # and the evaluation pass ranks by the same numbers
        evaluated = score_candidates(model, inputs_embeds=model.get_input_embeddings()(ids), attention_mask=mask,
                                     cand_input_ids=cand_ids, cand_attention_mask=cand_mask)
    torch.testing.assert_close(evaluated, token_lp.sum(-1).detach(), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", ["split", "joint"])
def test_padding_tokens_carry_no_log_probability(gated, pad, method):
    model, tok = gated
    ids, mask, cand_ids, cand_mask, _, _ = _case(model, tok, pad)
    with gate_context(model, torch.full((3, 2), 0.5)):
        token_lp = candidate_token_logprobs(model, inputs_embeds=model.get_input_embeddings()(ids), method=method,
                                            attention_mask=mask, cand_input_ids=cand_ids, cand_attention_mask=cand_mask)
    assert (token_lp[cand_mask == 0] == 0).all() and (token_lp[cand_mask == 1] < 0).all()


def test_single_token_candidates_and_unknown_method(gated, pad):
    """L = 1: only the first-token scores (no packed pass); a method name that does not exist is refused."""
    model, tok = gated
    ids, mask, cand_ids, cand_mask, _, _ = _case(model, tok, pad)
    one_ids, one_mask = cand_ids[:, :, :1], cand_mask[:, :, :1]
    with gate_context(model, torch.full((3, 2), 0.5)):
        split, joint = (candidate_token_logprobs(model, inputs_embeds=model.get_input_embeddings()(ids), method=m,
                                                 attention_mask=mask, cand_input_ids=one_ids,
                                                 cand_attention_mask=one_mask) for m in ("split", "joint"))
        with pytest.raises(ValueError, match="method='trie'"):
            candidate_token_logprobs(model, inputs_embeds=model.get_input_embeddings()(ids), method="trie",
                                     attention_mask=mask, cand_input_ids=one_ids, cand_attention_mask=one_mask)
    torch.testing.assert_close(split, joint, atol=1e-5, rtol=1e-5)
