"""Sequence-guided gates: user state z [B, D] -> expert weights [B, K], rows summing to 1.

Every gate is built as `Gate(*, in_dim, num_experts, **options)`; the model fills in_dim from the
encoder's hidden_dim and num_experts from the adapter config (Hydra configs are `_partial_`).
`forward(z, user_index=None)` has one signature for all gates so the caller never special-cases;
only `RandomGate` reads user_index. Weights come out in fp32 whatever the input dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ilora.errors import ConfigError


class Gate(nn.Module):
    """Base: validates the shared options and turns logits [B, K] into weights by softmax(logits / T)."""

    def __init__(self, *, in_dim: int, num_experts: int, temperature: float = 1.0) -> None:
        super().__init__()
        if int(in_dim) != in_dim or in_dim < 1:
            raise ConfigError(f"gate in_dim={in_dim} must be a positive integer (the encoder hidden_dim)")
        if int(num_experts) != num_experts or num_experts < 1:
            raise ConfigError(f"adapter.num_experts={num_experts} must be a positive integer")
        if not temperature > 0:
            raise ConfigError(f"gate.temperature={temperature} must be > 0")
        self.in_dim = int(in_dim)
        self.num_experts = int(num_experts)
        self.temperature = float(temperature)

    def logits(self, z: Tensor, user_index: Tensor | None) -> Tensor:
        """z [B, D] -> unnormalised scores [B, K]."""
        raise NotImplementedError

    def normalise(self, logits: Tensor) -> Tensor:
        """logits [B, K] -> weights [B, K] (fp32, rows sum to 1)."""
        return torch.softmax(logits.float() / self.temperature, dim=-1)

    def forward(self, z: Tensor, user_index: Tensor | None = None) -> Tensor:
        """z [B, D] (user state), user_index [B] (RandomGate only) -> gate weights [B, K]."""
        if z.dim() != 2 or z.shape[1] != self.in_dim:
            raise ConfigError(f"{type(self).__name__} expects z [B, {self.in_dim}], got {list(z.shape)}")
        return self.normalise(self.logits(z, user_index))


class LinearGate(Gate):
    """The paper's gate: softmax(W z / T), one linear map from the user state to K scores."""

    def __init__(self, *, in_dim: int, num_experts: int, temperature: float = 1.0, bias: bool = True) -> None:
        super().__init__(in_dim=in_dim, num_experts=num_experts, temperature=temperature)
        self.proj = nn.Linear(self.in_dim, self.num_experts, bias=bias)

    def logits(self, z: Tensor, user_index: Tensor | None) -> Tensor:
        return self.proj(z)


class MLPGate(Gate):
    """softmax(MLP(z) / T): Linear -> GELU -> Dropout -> Linear, hidden_dim defaults to in_dim."""

    def __init__(
        self,
        *,
        in_dim: int,
        num_experts: int,
        temperature: float = 1.0,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(in_dim=in_dim, num_experts=num_experts, temperature=temperature)
        hidden = self.in_dim if hidden_dim is None else int(hidden_dim)
        if hidden < 1:
            raise ConfigError(f"gate.hidden_dim={hidden_dim} must be a positive integer")
        if not 0.0 <= dropout < 1.0:
            raise ConfigError(f"gate.dropout={dropout} must be in [0, 1)")
        self.net = nn.Sequential(
            nn.Linear(self.in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, self.num_experts),
        )

    def logits(self, z: Tensor, user_index: Tensor | None) -> Tensor:
        return self.net(z)


def _top_k_softmax(logits: Tensor, k: int, temperature: float) -> Tensor:
    """Softmax over the k largest logits per row, zeros elsewhere: [B, K] -> [B, K] with k nonzeros."""
    values, idx = logits.float().topk(k, dim=-1)
    return torch.zeros_like(logits, dtype=torch.float32).scatter(
        -1, idx, torch.softmax(values / temperature, -1)
    )


class TopKGate(LinearGate):
    """Sparse linear gate: keep the k highest-scoring experts per row and renormalise over them."""

    def __init__(
        self, *, in_dim: int, num_experts: int, temperature: float = 1.0, k: int = 2, bias: bool = True
    ) -> None:
        super().__init__(in_dim=in_dim, num_experts=num_experts, temperature=temperature, bias=bias)
        if int(k) != k or not 1 <= k <= self.num_experts:
            raise ConfigError(f"gate.k={k} must be an integer in [1, adapter.num_experts={self.num_experts}]")
        self.k = int(k)

    def normalise(self, logits: Tensor) -> Tensor:
        return _top_k_softmax(logits, self.k, self.temperature)


class NoisyGate(LinearGate):
    """Linear gate with N(0, noise_std^2) added to the logits in training only (off in eval).

    Noise spreads early routing over experts; with k set it becomes noisy top-k (Shazeer et al. 2017,
    with a fixed rather than learned noise scale).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        num_experts: int,
        temperature: float = 1.0,
        noise_std: float = 1.0,
        k: int | None = None,
        bias: bool = True,
    ) -> None:
        super().__init__(in_dim=in_dim, num_experts=num_experts, temperature=temperature, bias=bias)
        if not noise_std >= 0:
            raise ConfigError(f"gate.noise_std={noise_std} must be >= 0")
        if k is not None and (int(k) != k or not 1 <= k <= self.num_experts):
            raise ConfigError(
                f"gate.k={k} must be null or an integer in [1, adapter.num_experts={self.num_experts}]"
            )
        self.noise_std = float(noise_std)
        self.k = None if k is None else int(k)

    def logits(self, z: Tensor, user_index: Tensor | None) -> Tensor:
        scores = self.proj(z)
        if self.training and self.noise_std > 0:
            scores = scores + torch.randn_like(scores) * self.noise_std
        return scores

    def normalise(self, logits: Tensor) -> Tensor:
        if self.k is None:
            return super().normalise(logits)
        return _top_k_softmax(logits, self.k, self.temperature)


class RandomGate(LinearGate):
    """Ablation: the gate sees a learned random embedding per user instead of the sequence state z.

    Fed as `gate(z, user_index=batch["user"])` (or batch["index"] when users are unknown); z is only
    checked for shape. Embeddings [num_users, in_dim] start N(0, 1), then the same linear map as
    LinearGate, so the two differ only in what the gate is conditioned on.
    """

    def __init__(
        self,
        *,
        in_dim: int,
        num_experts: int,
        num_users: int | None = None,
        temperature: float = 1.0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_dim=in_dim, num_experts=num_experts, temperature=temperature, bias=bias)
        if num_users is None or int(num_users) != num_users or num_users < 1:
            raise ConfigError(f"gate.num_users={num_users} must be a positive integer")
        self.num_users = int(num_users)
        self.user_embedding = nn.Embedding(self.num_users, self.in_dim)

    def logits(self, z: Tensor, user_index: Tensor | None) -> Tensor:
        if user_index is None:
            raise ConfigError("RandomGate needs user_index: call gate(z, user_index=batch['user'])")
        if user_index.numel() and (int(user_index.min()) < 0 or int(user_index.max()) >= self.num_users):
            raise ConfigError(
                f"RandomGate got user ids in [{int(user_index.min())}, {int(user_index.max())}], "
                f"outside gate.num_users={self.num_users}"
            )
        return self.proj(self.user_embedding(user_index))


class UniformGate(Gate):
    """Ablation: every expert weighs 1/K for every user (no parameters); equals plain LoRA up to scaling."""

    def logits(self, z: Tensor, user_index: Tensor | None) -> Tensor:
        return z.new_zeros(z.shape[0], self.num_experts)


def load_balancing_loss(gate_weights: Tensor) -> Tensor:
    """K * sum_k mean_b(g[b, k])^2 over gate weights [B, K]: 1 when the batch uses experts evenly, K at collapse."""
    mean = gate_weights.float().mean(dim=0)  # [K]
    return gate_weights.shape[-1] * mean.square().sum()


def gate_entropy(gate_weights: Tensor) -> Tensor:
    """Entropy per row [B, K] -> [B] in nats (0 log 0 = 0): log K for uniform, 0 for one-hot."""
    return torch.special.entr(gate_weights.float()).sum(dim=-1)
