"""Keyed LoRA dropout: rate, unbiasedness, masks that are a pure function of their key, shared per input, and
gradients equal to autograd's on the same stored mask."""

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from ilora.adapters import MoELoRALinear, apply_moe_lora, dropout_masks
from ilora.adapters.dropout import FastDropout, keep_mask, masked_linear, mix64


def _reference_keep(shape, threshold, seed, dtype=torch.float32):
    """The keep decisions written out independently: four 15-bit uniforms from each random int64 word."""
    n = 1
    for s in shape:
        n *= s
    words = torch.empty((n + 3) // 4, dtype=torch.int64).random_(generator=torch.Generator().manual_seed(seed))
    uniforms = []
    for w in words.tolist():
        w &= (1 << 64) - 1
        uniforms += [(w >> (16 * i)) & 0x7FFF for i in range(4)]  # little-endian int16 lanes, low 15 bits
    keep = torch.tensor(uniforms[:n]) >= threshold
    return keep.view(shape).to(dtype)


def _tiny_llama(dropout=0.3, seed=7, layers=2):
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    apply_moe_lora(model, rank=4, num_experts=1, alpha=8, dropout=dropout, dropout_seed=seed)
    for module in model.modules():
        if isinstance(module, MoELoRALinear):
            nn.init.normal_(module.lora_B)
    return model.train()


def _capture_masks(model, ids, step, micro):
    """{layer name: the keep mask it used} for one forward at (step, micro)."""
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.__setitem__(n, mod.dropout_keep))
             for n, m in model.named_modules() if isinstance(m, MoELoRALinear)]
    dropout_masks(model).at(step, micro)
    model(ids)
    for h in hooks:
        h.remove()
    return seen


def test_identity_in_eval_and_for_zero():
    x = torch.randn(3, 5)
    assert FastDropout(0.3).eval()(x) is x
    assert FastDropout(0.0).train()(x) is x
    with pytest.raises(ValueError, match="must be in"):
        FastDropout(1.0)


def test_keep_rate_and_unbiased():
    y = FastDropout(0.1).train()(torch.ones(400, 1000))
    assert (y != 0).float().mean().item() == pytest.approx(0.9, abs=2e-3)  # sd 3e-4
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_keep_mask_matches_the_written_out_decisions(dtype):
    for threshold in (1, 3277, 16384, 32767):
        shape = (3, 37, 5)  # odd element count: the last random word is only partly used
        got = keep_mask(shape, threshold, torch.Generator().manual_seed(threshold), dtype=dtype, device="cpu")
        assert got.dtype == dtype
        assert torch.equal(got, _reference_keep(shape, threshold, threshold, dtype))


def test_standalone_layer_folds_the_rescale_exactly():
    layer = MoELoRALinear(nn.Linear(16, 12), rank=4, num_experts=1, alpha=8, dropout=0.2).train()
    nn.init.normal_(layer.lora_B)
    x = torch.randn(2, 3, 16)
    keep = _reference_keep((2, 3, 16), layer.dropout.threshold, mix64(0, 0))  # seed 0, first call
    got = layer(x)
    dropped = x * keep / (1 - layer.dropout.p)
    want = layer.base(x) + layer.scaling * (dropped @ layer.lora_A.T) @ layer.lora_B.T
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(layer(x), got)  # the next call draws the next key's mask


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_masked_linear_gradients_equal_autograd_on_the_stored_mask(device):
    x = torch.randn(4, 7, 24, device=device, requires_grad=True)
    w = torch.randn(8, 24, device=device, requires_grad=True)
    keep = keep_mask((4, 7, 24), 9830, torch.Generator(device).manual_seed(5), dtype=torch.float32, device=device)
    g = torch.randn(4, 7, 8, device=device)
    got = masked_linear(x, keep, w)
    got.backward(g)
    got_grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    want = torch.nn.functional.linear(x * keep, w)
    want.backward(g)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grads, (x.grad, w.grad))


def test_masked_linear_under_bf16_autocast_matches_autograd():
    x = torch.randn(3, 9, 32, dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(8, 32, requires_grad=True)  # fp32 adapter weight
    keep = keep_mask((3, 9, 32), 6554, torch.Generator().manual_seed(7), dtype=torch.bfloat16, device="cpu")
    g = torch.randn(3, 9, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = masked_linear(x, keep, w)
    got.backward(g)
    got_grads = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = torch.nn.functional.linear(x * keep, w)
    want.backward(g)
    assert got.dtype == want.dtype == torch.bfloat16 and got_grads[1].dtype == torch.float32
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grads[0], x.grad)
    torch.testing.assert_close(got_grads[1], w.grad, atol=2e-2, rtol=2e-2)


def test_masks_are_a_pure_function_of_the_key():
    """Same (seed, step, micro-batch) -> the same masks whatever ran before; any other key -> other masks."""
    model = _tiny_llama()
    ids = torch.randint(0, 64, (2, 9))
    first = _capture_masks(model, ids, step=3, micro=1)
    torch.randn(1000)
    _capture_masks(model, ids, step=5, micro=0)  # other draws in between change nothing
    again = _capture_masks(model, ids, step=3, micro=1)
    assert first.keys() == again.keys() and len(first) == 14
    assert all(torch.equal(first[k], again[k]) for k in first)
    other_seed = _capture_masks(_tiny_llama(seed=8), ids, step=3, micro=1)
    for key in (dict(step=4, micro=1), dict(step=3, micro=0)):
        moved = _capture_masks(model, ids, **key)
        assert all(not torch.equal(first[k], moved[k]) for k in first)
    assert all(not torch.equal(first[k], other_seed[k]) for k in first)


def test_projections_reading_one_input_share_its_mask_and_nothing_else_does():
    model = _tiny_llama()
    masks = _capture_masks(model, torch.randint(0, 64, (2, 9)), step=0, micro=0)
    for layer in (0, 1):
        p = f"model.layers.{layer}."
        q, k, v = (masks[p + f"self_attn.{n}_proj"] for n in "qkv")
        gate, up = masks[p + "mlp.gate_proj"], masks[p + "mlp.up_proj"]
        assert q is k is v and gate is up
        distinct = [q, masks[p + "self_attn.o_proj"], gate]
        assert not torch.equal(distinct[0], distinct[1]) and not torch.equal(distinct[0], distinct[2])
    assert not torch.equal(masks["model.layers.0.self_attn.q_proj"], masks["model.layers.1.self_attn.q_proj"])


def test_rate_within_sampling_error_and_no_correlation_across_layers_steps_micro_batches():
    model = _tiny_llama(dropout=0.1, layers=3)
    ids = torch.randint(0, 64, (16, 64))
    name = "model.layers.{}.mlp.gate_proj"
    runs = {(s, m): _capture_masks(model, ids, step=s, micro=m) for s, m in ((0, 0), (0, 1), (1, 0))}
    flat = {(s, m, layer): runs[(s, m)][name.format(layer)].flatten()
            for (s, m) in runs for layer in range(3)}
    n = next(iter(flat.values())).numel()  # 16 x 64 x 32
    p_keep = 1 - round(0.1 * 32768) / 32768
    for mask in flat.values():
        assert abs(mask.mean().item() - p_keep) < 5 * (p_keep * (1 - p_keep) / n) ** 0.5
    keys = list(flat)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            corr = torch.corrcoef(torch.stack([flat[a], flat[b]]))[0, 1].item()
            assert abs(corr) < 5 / n**0.5, (a, b, corr)


def test_no_dropped_copy_is_kept_for_backward():
    """Input-sized tensors saved by a dropped LoRA projection: x and the group's mask, not x * mask per projection."""
    x = torch.randn(3, 5, 16, requires_grad=True)
    keep = keep_mask((3, 5, 16), 3277, torch.Generator().manual_seed(0), dtype=torch.float32, device="cpu")
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        for _ in range(3):  # q, k, v
            masked_linear(x, keep, torch.randn(4, 16, requires_grad=True))
    big = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= x.numel()}
    assert big == {x.untyped_storage().data_ptr(), keep.untyped_storage().data_ptr()}


def test_activation_checkpointing_reuses_the_forward_masks():
    """A block re-run during backward gets its forward call's masks: gradients equal the plain run's."""
    ids = torch.randint(0, 64, (2, 9))
    grads = []
    for checkpointing in (False, True):
        model = _tiny_llama()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        dropout_masks(model).at(2, 1)
        model(ids).logits.sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for key in grads[0]:
        torch.testing.assert_close(grads[0][key], grads[1][key], msg=key)
