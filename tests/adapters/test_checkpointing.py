"""Activation checkpointing: a MoE-LoRA layer re-run during backward (after gate_context closed) reuses its gate."""

import pytest
import torch
from torch import nn

from ilora.adapters import MoELoRALinear


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
