"""`model.compile`: compiled decoder blocks give the eager loss and gradients (same keyed dropout masks), in one
graph without breaks, for the answer loss and the rank loss's joint pass; evaluation stays eager. Tiny backbone
only: compilation never runs on a real backbone in the test suite."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ilora.adapters import apply_moe_lora, dropout_masks, gate_context
from ilora.backbones import load_backbone
from ilora.compiled import compile_blocks, compile_stats
from ilora.errors import ConfigError
from ilora.evaluation.ranking import candidate_token_logprobs


@pytest.fixture(scope="module")
def pair():
    """(eager, compiled) copies of the tiny Llama with a gated 2-expert MoE-LoRA, dropout 0.1, non-zero B."""
    model, _ = load_backbone("tiny_random", dtype="float32", seed=3, initializer_range=0.2)
    model = copy.deepcopy(model)
    apply_moe_lora(model, rank=4, num_experts=2, alpha=8, dropout=0.1, dropout_seed=11)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.normal_(0, 0.2)
    compiled = copy.deepcopy(model)
    torch._dynamo.reset()
    assert compile_blocks(compiled) == len(compiled.get_decoder().layers)
    return model.train(), compiled.train()


def _answer_loss(model, ids):
    hidden = model.get_decoder()(inputs_embeds=model.get_input_embeddings()(ids), use_cache=False).last_hidden_state
    logits = model.get_output_embeddings()(hidden[:, :-1]).float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def _rank_loss(model, ids, cand_ids):
    lp = candidate_token_logprobs(model, inputs_embeds=model.get_input_embeddings()(ids),
                                  attention_mask=torch.ones_like(ids), cand_input_ids=cand_ids,
                                  cand_attention_mask=torch.ones_like(cand_ids), method="joint")
    return F.cross_entropy(lp.sum(-1), torch.tensor([1, 0, 2]))


def _loss_and_grads(model, loss_fn, gate, step):
    dropout_masks(model).at(step, 0)
    model.zero_grad(set_to_none=True)
    with gate_context(model, gate):
        loss = loss_fn(model)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("case", ["answer", "rank_joint"])
def test_compiled_blocks_give_the_eager_loss_and_gradients(pair, case):
    eager, compiled = pair
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 4000, (3, 21), generator=g)
    cand_ids = torch.randint(5, 4000, (3, 4, 3), generator=g)
    loss_fn = (lambda m: _answer_loss(m, ids)) if case == "answer" else (lambda m: _rank_loss(m, ids, cand_ids))
    gate = torch.softmax(torch.randn(3, 2, generator=g), -1)
    for step in (0, 1):  # two steps: other masks, no recompilation needed
        want, want_grads = _loss_and_grads(eager, loss_fn, gate, step)
        got, got_grads = _loss_and_grads(compiled, loss_fn, gate, step)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
        assert want_grads.keys() == got_grads.keys()
        for key in want_grads:
            torch.testing.assert_close(got_grads[key], want_grads[key], atol=1e-4, rtol=1e-3, msg=key)
    stats = compile_stats()
    assert stats["graph_breaks"] == 0 and 1 <= stats["graphs"] <= 4


def test_evaluation_stays_eager(pair):
    _, compiled = pair
    before = compile_stats()["graphs"]
    with torch.no_grad(), gate_context(compiled, torch.full((2, 2), 0.5)):
        compiled.eval()(torch.randint(5, 4000, (2, 33)))  # a new shape, no grad, KV cache: no compilation
    compiled.train()
    assert compile_stats()["graphs"] == before


def test_a_model_without_decoder_layers_is_refused():
    with pytest.raises(ConfigError, match="model.compile=true needs a decoder with a `layers` list"):
        compile_blocks(torch.nn.Linear(3, 3))
