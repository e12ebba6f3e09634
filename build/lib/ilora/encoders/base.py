"""The sequential-encoder contract (docs/ARCHITECTURE.md): item table, user state, next-item logits.

Every encoder owns one item table `[num_items + 1, D]` whose last row is the padding id (kept at zero by
`padding_idx`). Next-item logits are the user state dotted with that same table (tied weights), so the
embeddings the LLM projector later reads are exactly the ones the ranking was trained on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn


class SequentialEncoder(nn.Module, ABC):
    """Base class: subclasses implement `_state(history, lengths)` and list their `hparams()`."""

    name: str = ""

    def __init__(self, *, num_items: int, hidden_dim: int) -> None:
        super().__init__()
        if num_items < 1 or hidden_dim < 1:
            raise ValueError(f"num_items and hidden_dim must be positive, got {num_items} and {hidden_dim}")
        self.num_items = int(num_items)
        self.hidden_dim = int(hidden_dim)
        self.items = nn.Embedding(num_items + 1, hidden_dim, padding_idx=num_items)
        nn.init.normal_(self.items.weight, std=hidden_dim**-0.5)
        with torch.no_grad():
            self.items.weight[num_items].zero_()

    @property
    def padding_id(self) -> int:
        return self.num_items

    @abstractmethod
    def hparams(self) -> dict[str, Any]:
        """Constructor keywords (besides num_items) that rebuild this architecture; saved in config.json."""

    @abstractmethod
    def _state(self, history: Tensor, lengths: Tensor) -> Tensor:
        """`history [B, W]` (positions >= length already set to padding), `lengths [B]` -> `[B, D]`."""

    def item_embeddings(self, ids: Tensor) -> Tensor:
        """Item vectors: `ids [...]` -> `[..., D]` (the padding id maps to zeros)."""
        return self.items(ids)

    def user_state(self, history: Tensor, lengths: Tensor) -> Tensor:
        """User representation: `history [B, W]` right-padded, `lengths [B]` -> `[B, D]`.

        Whatever lies at positions >= length is replaced by the padding id first, so the state depends only
        on the real items. An empty history (length 0) yields the encoder's constant "no history" state.
        """
        positions = torch.arange(history.shape[1], device=history.device)
        real = positions[None, :] < lengths[:, None]
        history = torch.where(real, history, torch.full_like(history, self.padding_id))
        return self._state(history, lengths.clamp(min=0, max=history.shape[1]))

    def forward(self, history: Tensor, lengths: Tensor) -> Tensor:
        """Next-item logits `[B, num_items]`: user state `[B, D]` dotted with every real item vector `[N, D]`."""
        return self.user_state(history, lengths) @ self.items.weight[: self.num_items].T


def last_valid(hidden: Tensor, lengths: Tensor) -> Tensor:
    """Hidden state at the last real position: `hidden [B, W, D]`, `lengths [B]` -> `[B, D]` (length 0 reads 0)."""
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])
    return hidden.gather(1, index).squeeze(1)
