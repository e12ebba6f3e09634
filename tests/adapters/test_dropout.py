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

