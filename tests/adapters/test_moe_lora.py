"""MoELoRALinear: parity with peft (K=1), with the naive per-expert sum, merging, disabling, errors."""

import pytest
import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn

from ilora.adapters import MoELoRALinear, UniformGate, disable_adapters, gate_context
from ilora.errors import ConfigError


class Wrap(nn.Module):
    """A module holding one linear called `proj`, so both peft and gate_context can target it."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.proj = layer

    def forward(self, x):
        return self.proj(x)


def make_layer(in_f=12, out_f=10, rank=8, k=4, alpha=16.0, **kw) -> MoELoRALinear:
    layer = MoELoRALinear(nn.Linear(in_f, out_f), rank, k, alpha, **kw)
    with torch.no_grad():
        layer.lora_B.normal_()  # B starts at zero; make the adapter path visible
    return layer


def random_gate(b, k):
    return torch.softmax(torch.randn(b, k), dim=-1)


def test_fresh_layer_equals_base_and_is_initialised_as_lora():
    layer = MoELoRALinear(nn.Linear(12, 10), rank=8, num_experts=4, alpha=16)
    x = torch.randn(3, 5, 12)
    with gate_context(Wrap(layer), random_gate(3, 4)):
        torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
    assert layer.lora_A.abs().sum() > 0 and layer.lora_B.abs().sum() == 0
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    assert not any(p.requires_grad for p in layer.base.parameters())
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad


@pytest.mark.parametrize("shape", [(3, 7, 12), (3, 12)])
def test_single_expert_matches_peft_outputs_and_gradients(shape):
    base = nn.Linear(12, 10)
    ours = make_layer(rank=8, k=1, alpha=16.0)
    ours.base.load_state_dict(base.state_dict())
    ref = inject_adapter_in_model(
        LoraConfig(r=8, lora_alpha=16, target_modules=["proj"], lora_dropout=0.0), Wrap(nn.Linear(12, 10))
    ).proj
    with torch.no_grad():
        ref.base_layer.load_state_dict(base.state_dict())
        ref.lora_A["default"].weight.copy_(ours.lora_A)
        ref.lora_B["default"].weight.copy_(ours.lora_B)
    assert ref.scaling["default"] == ours.scaling == 2.0

    x1 = torch.randn(*shape, requires_grad=True)
    x2 = x1.detach().clone().requires_grad_(True)
    y_ours, y_ref = ours(x1), ref(x2)  # K=1 needs no gate
    torch.testing.assert_close(y_ours, y_ref)
    w = torch.randn_like(y_ours)
    (y_ours * w).sum().backward()
    (y_ref * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad)
    torch.testing.assert_close(ours.lora_A.grad, ref.lora_A["default"].weight.grad)
    torch.testing.assert_close(ours.lora_B.grad, ref.lora_B["default"].weight.grad)


@pytest.mark.parametrize("k", [2, 4, 8])
@pytest.mark.parametrize("scaling", ["expert", "rank"])
def test_stacked_form_equals_naive_per_expert_sum(k, scaling):
    layer = make_layer(rank=8, k=k, alpha=16.0, scaling=scaling)
    x, gate = torch.randn(3, 5, 12), random_gate(3, k)
    with gate_context(Wrap(layer), gate):
        y = layer(x)
    r = 8 // k
    s = 16.0 / (r if scaling == "expert" else 8)
    naive = layer.base(x)
    for e in range(k):
        a, b = layer.lora_A[e * r : (e + 1) * r], layer.lora_B[:, e * r : (e + 1) * r]
        naive = naive + s * gate[:, e, None, None] * (x @ a.T @ b.T)
    torch.testing.assert_close(y, naive)


def test_uniform_gate_trains_exactly_as_one_lora_of_the_same_rank_in_fp32():
    """The study's control: K=4 experts under the uniform gate are LoRA K=1 in exact arithmetic, and in fp32 the
    arithmetic is exact too (the gate's 1/4 meets the expert scaling's 4), so with the same init, dropout masks and
    AdamW the two stay bit-identical (LastFM seed 2 in fp32: the same rank for all 122 test users). Under bf16
    autocast the gated path rounds gate * scaling / (1 - p) to bf16 and the runs drift apart."""
    torch.manual_seed(0)
    base = nn.Linear(12, 10)
    lora = MoELoRALinear(base, rank=8, num_experts=1, alpha=32.0, dropout=0.1, scaling="expert")
    mixed = MoELoRALinear(base, rank=8, num_experts=4, alpha=32.0, dropout=0.1, scaling="expert")
    with torch.no_grad():
        mixed.lora_A.copy_(lora.lora_A)
    assert lora.dropout_active() and mixed.dropout_active()  # the path whose scale bf16 would round
    gate = UniformGate(in_dim=6, num_experts=4)
    opts = [torch.optim.AdamW([m.lora_A, m.lora_B], lr=1e-2) for m in (lora, mixed)]
    for _ in range(5):
        x, w = torch.randn(3, 5, 12), torch.randn(3, 5, 10)
        y_lora = lora(x)
        with gate_context(Wrap(mixed), gate(torch.randn(3, 6))):
            y_mixed = mixed(x)
        assert torch.equal(y_lora, y_mixed)
        for y, opt in zip((y_lora, y_mixed), opts):
            opt.zero_grad()
            (y * w).sum().backward()
            opt.step()
    assert lora.lora_B.abs().sum() > 0  # training moved B off zero, so the adapter path took part
    assert torch.equal(lora.lora_A, mixed.lora_A) and torch.equal(lora.lora_B, mixed.lora_B)


def test_gate_rows_route_each_sequence_and_expand_over_repeated_batches():
    layer = make_layer(k=4)
    x, gate = torch.randn(2, 5, 12), random_gate(2, 4)
    with gate_context(Wrap(layer), gate):
        y = layer(x)
        y_rep = layer(x.repeat_interleave(3, dim=0))  # batch 6 = 3 beams per sequence
    for i in range(2):
        with gate_context(Wrap(layer), gate[i : i + 1]):
            torch.testing.assert_close(y[i : i + 1], layer(x[i : i + 1]))
    torch.testing.assert_close(y_rep, y.repeat_interleave(3, dim=0))
    with gate_context(Wrap(layer), gate), pytest.raises(ConfigError, match="not a multiple"):
        layer(torch.randn(3, 5, 12))


def test_missing_gate_raises_for_several_experts():
    with pytest.raises(ConfigError, match="gate_context"):
        make_layer(k=4)(torch.randn(2, 12))


def test_gate_context_clears_gate_even_on_error():
    layer = make_layer(k=4)
    with pytest.raises(RuntimeError), gate_context(Wrap(layer), random_gate(2, 4)):
        assert layer.gate is not None
        raise RuntimeError("boom")
    assert layer.gate is None


def test_gate_gradients_flow_to_the_gate():
    layer = make_layer(k=4)
    logits = torch.randn(2, 4, requires_grad=True)
    with gate_context(Wrap(layer), torch.softmax(logits, -1)):
        layer(torch.randn(2, 5, 12)).square().sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_merge_unmerge_round_trip_is_exact():
    layer = make_layer(k=4)
    original = layer.base.weight.detach().clone()
    x, gate = torch.randn(1, 5, 12), random_gate(1, 4)
    with gate_context(Wrap(layer), gate):
        y_gated = layer(x)
        layer.merge(gate)
        assert not torch.equal(layer.base.weight, original)
        torch.testing.assert_close(layer(x), y_gated)  # merged forward skips the LoRA path
        with pytest.raises(ConfigError, match="already merged"):
            layer.merge(gate)
        layer.unmerge()
    assert torch.equal(layer.base.weight, original)


def test_merge_rejects_more_than_one_user():
    with pytest.raises(ConfigError, match=r"\[1, 4\]"):
        make_layer(k=4).merge(random_gate(2, 4))


def test_disable_adapters_equals_frozen_base_even_when_merged():
    layer = make_layer(k=4)
    x, gate = torch.randn(2, 5, 12), random_gate(2, 4)
    module = Wrap(layer)
    with gate_context(module, gate):
        with disable_adapters(module):
            torch.testing.assert_close(layer(x), layer.base(x), rtol=0, atol=0)
        assert not torch.allclose(layer(x), layer.base(x))
    base_out = layer.base(x)
    layer.merge(gate[:1])
    with disable_adapters(module):
        torch.testing.assert_close(layer(x), base_out, rtol=0, atol=0)
    layer.unmerge()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 8, "num_experts": 3}, "adapter.num_experts=3 does not divide adapter.rank=8"),
        ({"rank": 0, "num_experts": 1}, "adapter.rank"),
        ({"rank": 8, "num_experts": 0}, "adapter.num_experts"),
        ({"rank": 8, "num_experts": 2, "scaling": "sqrt"}, "adapter.scaling"),
        ({"rank": 8, "num_experts": 2, "dropout": 1.0}, "adapter.dropout"),
    ],
)
def test_bad_settings_raise_at_construction(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MoELoRALinear(nn.Linear(4, 4), alpha=16, **kwargs)


def test_bf16_base_keeps_fp32_adapters_and_base_dtype_output():
    layer = make_layer(k=4).to(torch.bfloat16)
    with torch.no_grad():  # .to() converted the adapters too; the contract is fp32 adapters
        layer.lora_A.data, layer.lora_B.data = layer.lora_A.data.float(), layer.lora_B.data.float()
    ref = make_layer(k=4)
    ref.load_state_dict({k: v.float() for k, v in layer.state_dict().items()})
    x, gate = torch.randn(2, 5, 12), random_gate(2, 4)
    with gate_context(Wrap(layer), gate), gate_context(Wrap(ref), gate):
        y16 = layer(x.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_auto = ref(x)
        y32 = ref(x)
    assert y16.dtype == torch.bfloat16 and y_auto.dtype == torch.bfloat16
    assert layer.lora_A.dtype == torch.float32
    torch.testing.assert_close(y16.float(), y32, rtol=0.05, atol=0.1)
    torch.testing.assert_close(y_auto.float(), y32, rtol=0.05, atol=0.1)
