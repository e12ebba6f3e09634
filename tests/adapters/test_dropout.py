"""FastDropout: identity in eval, keep rate 1 - p, unbiased, and the layer's folded rescale equals dropout(x)."""

import pytest
import torch
from torch import nn

from ilora.adapters import MoELoRALinear
from ilora.adapters.dropout import FastDropout


def test_identity_in_eval_and_for_zero():
    x = torch.randn(3, 5)
    assert FastDropout(0.3).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="must be in"):
        FastDropout(1.0)


def test_keep_rate_and_unbiased():
    torch.manual_seed(0)
    y = FastDropout(0.1).train()(torch.ones(400, 1000))
    assert (y != 0).float().mean().item() == pytest.approx(0.9, abs=2e-3)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)


def test_layer_folds_the_rescale_exactly():
    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(16, 12), rank=4, num_experts=1, alpha=8, dropout=0.2).train()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 3, 16)
    torch.manual_seed(1)
    got = layer(x)
    torch.manual_seed(1)
    dropped = layer.dropout(x)  # the same mask, rescaled here
    want = layer.base(x) + layer.scaling * (dropped @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_checkpointed_layer_reuses_its_forward_gate_in_backward():
    from torch.utils.checkpoint import checkpoint

    from ilora.adapters import gate_context
    from ilora.errors import ConfigError

    torch.manual_seed(0)
    layer = MoELoRALinear(nn.Linear(8, 6), rank=4, num_experts=2, alpha=8)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 3, 8)
    logits = torch.randn(2, 2, requires_grad=True)
    grads = []
    for ckpt in (False, True):
        layer.zero_grad()
        logits.grad = None
        with gate_context(layer, torch.softmax(logits, -1)):
            y = checkpoint(layer, x, use_reentrant=False) if ckpt else layer(x)
        y.square().sum().backward()  # after the context closed, as Lightning does
        grads.append((layer.lora_B.grad.clone(), logits.grad.clone()))
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(ConfigError, match="no gate is set"):  # outside backward the contract is unchanged
        layer(x)
