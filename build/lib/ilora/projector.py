"""Maps frozen recommender item embeddings into the LLM's token-embedding space (LLaRA's projector)."""

from __future__ import annotations

from torch import Tensor, nn


class ItemProjector(nn.Module):
    """Linear -> GELU -> Linear, as LLaRA: `e_llm = W2 gelu(W1 e_rec)`.

    Args:
        in_dim: the sequential encoder's hidden size (taken from the encoder, never hard-coded).
        out_dim: the LLM's hidden size.
        hidden_dim: width of the middle layer (LLaRA uses the LLM's hidden size).
    """

    def __init__(self, *, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, item_embeddings: Tensor) -> Tensor:
        """[..., D_rec] -> [..., D_llm]."""
        return self.net(item_embeddings)
