"""Gates: rows sum to 1, sparsity, noise only while training, ablations, auxiliary losses."""

import math

import pytest
import torch

from ilora.adapters import (
    LinearGate,
    MLPGate,
    NoisyGate,
    RandomGate,
    TopKGate,
    UniformGate,
    gate_entropy,
    load_balancing_loss,
)
from ilora.errors import ConfigError

GATES = [LinearGate, MLPGate, TopKGate, NoisyGate, RandomGate, UniformGate]


def build(cls, **kw):
    extra = {"num_users": 10} if cls is RandomGate else {}
    return cls(in_dim=16, num_experts=4, **extra, **kw)


@pytest.mark.parametrize("cls", GATES)
def test_rows_sum_to_one(cls):
    gate = build(cls)
    z = torch.randn(5, 16)
    g = gate(z, user_index=torch.arange(5))
    assert g.shape == (5, 4) and g.dtype == torch.float32
    assert (g >= 0).all()
    torch.testing.assert_close(g.sum(-1), torch.ones(5))


def test_linear_gate_is_softmax_of_linear_with_temperature():
    gate = LinearGate(in_dim=16, num_experts=4, temperature=2.0)
    z = torch.randn(3, 16)
    torch.testing.assert_close(gate(z), torch.softmax(gate.proj(z) / 2.0, -1))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_has_exactly_k_nonzeros_on_the_best_experts(k):
    gate = TopKGate(in_dim=16, num_experts=4, k=k)
    z = torch.randn(6, 16)
    g = gate(z)
    assert ((g > 0).sum(-1) == k).all()
    best = gate.proj(z).topk(k, -1).indices
    assert (g.gather(-1, best) > 0).all()


def test_noisy_gate_is_noisy_only_in_training():
    gate = NoisyGate(in_dim=16, num_experts=4, noise_std=1.0)
    z = torch.randn(3, 16)
    assert not torch.allclose(gate.train()(z), gate(z))
    gate.eval()
    torch.testing.assert_close(gate(z), torch.softmax(gate.proj(z), -1))


def test_random_gate_depends_on_user_not_state():
    gate = RandomGate(in_dim=16, num_experts=4, num_users=10)
    users = torch.tensor([1, 1, 2])
    g = gate(torch.randn(3, 16), user_index=users)
    torch.testing.assert_close(g[0], g[1])
    assert not torch.allclose(g[0], g[2])
    with pytest.raises(ConfigError, match="user_index"):
        gate(torch.randn(3, 16))
    with pytest.raises(ConfigError, match="num_users=10"):
        gate(torch.randn(1, 16), user_index=torch.tensor([10]))


def test_uniform_gate_has_no_parameters():
    gate = UniformGate(in_dim=16, num_experts=4)
    assert sum(p.numel() for p in gate.parameters()) == 0
    torch.testing.assert_close(gate(torch.randn(2, 16)), torch.full((2, 4), 0.25))


def test_gradients_reach_gate_parameters():
    gate = MLPGate(in_dim=16, num_experts=4)
    (gate(torch.randn(4, 16)) * torch.randn(4, 4)).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gate.parameters())


@pytest.mark.parametrize(
    "cls, kw, match",
    [
        (LinearGate, {"temperature": 0.0}, "gate.temperature"),
        (TopKGate, {"k": 5}, "gate.k=5"),
        (NoisyGate, {"noise_std": -1.0}, "gate.noise_std"),
        (RandomGate, {}, "gate.num_users"),
    ],
)
def test_bad_options_raise(cls, kw, match):
    with pytest.raises(ConfigError, match=match):
        cls(in_dim=16, num_experts=4, **kw)


def test_wrong_input_width_names_expected_shape():
    with pytest.raises(ConfigError, match=r"z \[B, 16\]"):
        LinearGate(in_dim=16, num_experts=4)(torch.randn(2, 8))


def test_load_balancing_and_entropy():
    uniform = torch.full((3, 4), 0.25)
    onehot = torch.eye(4)[[0, 0, 0]]
    torch.testing.assert_close(load_balancing_loss(uniform), torch.tensor(1.0))
    torch.testing.assert_close(load_balancing_loss(onehot), torch.tensor(4.0))
    torch.testing.assert_close(gate_entropy(uniform), torch.full((3,), math.log(4)))
    torch.testing.assert_close(gate_entropy(onehot), torch.zeros(3))


def test_hydra_configs_build_each_gate():
    from pathlib import Path

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    conf = Path(__file__).resolve().parents[2] / "conf" / "gate"
    names = sorted(p.stem for p in conf.glob("*.yaml"))
    assert names == ["linear", "mlp", "noisy", "random", "topk", "uniform"]
    for name in names:
        partial = instantiate(OmegaConf.load(conf / f"{name}.yaml"))
        extra = {"num_users": 3} if name == "random" else {}
        gate = partial(in_dim=8, num_experts=2, **extra)
        g = gate(torch.randn(3, 8), user_index=torch.arange(3))
        torch.testing.assert_close(g.sum(-1), torch.ones(3))
