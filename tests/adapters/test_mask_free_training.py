"""Training batches are right-padded, so the loss path passes no attention mask: exact for every real token."""

import torch

from ilora.adapters import apply_moe_lora, gate_context
from ilora.recommender import causal_mask_or_none


def test_right_padded_rows_drop_the_mask_and_others_keep_it():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    holed = torch.tensor([[1, 0, 1, 1]])
    assert causal_mask_or_none(right) is None
    assert causal_mask_or_none(torch.ones(3, 5, dtype=torch.long)) is None
    assert causal_mask_or_none(left) is left and causal_mask_or_none(holed) is holed


def test_mask_free_forward_equals_masked_forward_on_real_tokens(tiny_llama):
    """Grouped-query heads (4 query, 2 key/value) and MoE-LoRA with a gate: hidden states and gradients agree."""
    model = tiny_llama()
    apply_moe_lora(model, rank=4, num_experts=2, alpha=8, dropout=0.0)
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.randint(3, 96, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    mask[2, 4:] = 0
    gate = torch.softmax(torch.randn(3, 2), -1)
    outs, grads = [], []
    for attention_mask in (mask, causal_mask_or_none(mask)):
        model.zero_grad()
        with gate_context(model, gate):
            hidden = model.model(input_ids=ids, attention_mask=attention_mask).last_hidden_state
            hidden[mask.bool()].square().sum().backward()
        outs.append(hidden[mask.bool()].detach())
        grads.append([p.grad.clone() for p in model.parameters() if p.requires_grad])
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
