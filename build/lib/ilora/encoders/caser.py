"""Caser (Tang & Wang, 2018): horizontal and vertical convolutions over the last L item embeddings.

The history is first right-aligned (latest item at position L-1, padding in front), because the vertical
filters weight positions: they must mean "k steps before now" for every length, not "k-th item ever".
Padding rows are zero (the padding id's embedding). There are no user embeddings here (the LLM sees
only the sequence), so the user state is `relu(W [horizontal; vertical] + b)`, width D.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ilora.encoders.base import SequentialEncoder
from ilora.errors import ConfigError


class Caser(SequentialEncoder):
    """`z = relu(W drop([maxpool relu(conv_h(E)) for h in heights; conv_v(E)]))`; logits `z E^T`."""

    name = "caser"

    def __init__(
        self, *, num_items: int, hidden_dim: int = 64, max_len: int = 10, num_horizontal: int = 16,
        num_vertical: int = 4, heights: list[int] | None = None, dropout: float = 0.3,
    ) -> None:
        super().__init__(num_items=num_items, hidden_dim=hidden_dim)
        heights = list(range(1, max_len + 1)) if heights is None else [int(h) for h in heights]
        if not heights or min(heights) < 1 or max(heights) > max_len:
            raise ConfigError(f"encoder.heights={heights} must be non-empty and within 1..encoder.max_len={max_len}")
        self.max_len, self.num_horizontal, self.num_vertical = max_len, num_horizontal, num_vertical
        self.heights, self.dropout = heights, dropout
        # Conv1d over [B, D, L] with kernel h == Conv2d(1, n_h, (h, D)) over the [L, D] image.
        self.horizontal = nn.ModuleList(nn.Conv1d(hidden_dim, num_horizontal, h) for h in heights)
        self.vertical = nn.Conv2d(1, num_vertical, (max_len, 1))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(num_horizontal * len(heights) + num_vertical * hidden_dim, hidden_dim)

    def hparams(self) -> dict[str, Any]:
        return {"hidden_dim": self.hidden_dim, "max_len": self.max_len, "num_horizontal": self.num_horizontal,
                "num_vertical": self.num_vertical, "heights": list(self.heights), "dropout": self.dropout}

    def _right_align(self, history: Tensor, lengths: Tensor) -> Tensor:
        """`[B, W]` right-padded -> `[B, L]` holding the last <= L real items at the end, padding in front."""
        source = lengths[:, None] - self.max_len + torch.arange(self.max_len, device=history.device)  # [B, L]
        valid = source >= 0
        taken = history.gather(1, source.clamp(min=0, max=history.shape[1] - 1))
        return torch.where(valid, taken, torch.full_like(taken, self.padding_id))

    def _state(self, history: Tensor, lengths: Tensor) -> Tensor:
        """`history [B, W]`, `lengths [B]` -> `[B, D]`."""
        emb = self.items(self._right_align(history, lengths))  # [B, L, D], padding rows zero
        channels = emb.transpose(1, 2)  # [B, D, L]
        pooled = [torch.relu(conv(channels)).amax(dim=2) for conv in self.horizontal]  # each [B, n_h]
        vertical = self.vertical(emb.unsqueeze(1)).flatten(1)  # [B, n_v * D]
        features = torch.cat([*pooled, vertical], dim=1)
        return torch.relu(self.fc(self.drop(features)))
