"""FastDropout: identity in eval, keep rate 1 - p, unbiased, and the layer's folded rescale equals dropout(x)."""

import pytest
import torch
from torch import nn

from ilora.adapters import MoELoRALinear
from ilora.adapters.dropout import FastDropout, _drop_mask


def _next_mask(x, threshold, seed):
    """The mask `FastDropout.project` draws right after `torch.manual_seed(seed)`."""
    torch.manual_seed(seed)
    private = int(torch.empty((), dtype=torch.int64).random_().item())
    return _drop_mask(x, threshold, torch.Generator(x.device).manual_seed(private))


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
    mask = _next_mask(x, layer.dropout.threshold, 1)
    torch.manual_seed(1)
    got = layer(x)
    dropped = x.masked_fill(mask, 0.0) / (1 - layer.dropout.p)  # the same mask, rescaled here
    want = layer.base(x) + layer.scaling * (dropped @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_project_recomputes_the_same_mask_for_gradients(device):
    """Backward redraws the mask from the saved seed: values and both gradients equal autograd's on a stored mask
    (the same code on CUDA, with a CUDA generator)."""
    drop = FastDropout(0.3).train()
    x = torch.randn(4, 7, 24, device=device, requires_grad=True)
    w = torch.randn(8, 24, device=device, requires_grad=True)
    g = torch.randn(4, 7, 8, device=device)
    mask = _next_mask(x, drop.threshold, 5)
    assert 0.2 < mask.float().mean().item() < 0.4
    torch.manual_seed(5)
    got = drop.project(x, w)
    torch.randn(1000)  # the global stream moves on before backward: the mask must not follow it
    got.backward(g)
    got_grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    want = torch.nn.functional.linear(x.masked_fill(mask, 0.0), w)
    want.backward(g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grads, (x.grad, w.grad))


def test_project_keeps_no_dropped_copy_of_the_input():
    """What autograd saves for backward: x itself (shared by q/k/v) and the weight, nothing input-sized besides."""
    drop = FastDropout(0.1).train()
    x = torch.randn(3, 5, 16, requires_grad=True)
    w = torch.randn(4, 16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        drop.project(x, w)
        drop.project(x, torch.randn(6, 16, requires_grad=True))
    big = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= x.numel()}
    assert big == {x.untyped_storage().data_ptr()}



@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_mask_makes_the_same_decisions_as_the_bool_mask(dtype):
    """The multiplicative 0/1 mask the layer uses keeps exactly the elements the bool reference keeps."""
    from ilora.adapters.dropout import _keep_mask

    x = torch.randn(3, 37, 50).to(dtype)  # odd element count: the last random word is only partly used
    for threshold in (1, 3277, 16384, 32767):
        keep = _keep_mask(x, threshold, torch.Generator().manual_seed(threshold))
        drop = _drop_mask(x, threshold, torch.Generator().manual_seed(threshold))
        assert keep.dtype == dtype and keep.shape == x.shape
        assert set(keep.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(keep == 0, drop)


def test_project_under_bf16_autocast_matches_autograd_on_the_same_mask():
    """Mixed precision: bf16 forward, fp32 weight gradient, as autograd gives for F.linear on the dropped input."""
    drop = FastDropout(0.2).train()
    x = torch.randn(3, 9, 32, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, 32, requires_grad=True)  # fp32 adapter weight
    g = torch.randn(3, 9, 8, dtype=torch.bfloat16)
    mask = _next_mask(x, drop.threshold, 7)
    torch.manual_seed(7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = drop.project(x, w)
    got.backward(g)
    got_grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.linear(x.masked_fill(mask, 0.0), w)
    want.backward(g)
    assert got.dtype == want.dtype == torch.bfloat16 and got_grads[1].dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grads[0], x.grad)
    torch.testing.assert_close(got_grads[1], w.grad, atol=2e-2, rtol=2e-2)
