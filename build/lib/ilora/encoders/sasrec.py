"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence.

Pre-norm transformer blocks with learned absolute positions (position 0 = oldest item, as LLaRA's SASRec),
a causal mask, and the final-normalised hidden state at the last real position as the user state.
Histories are right-padded, so the causal mask alone keeps padding out of every real position: no key
padding mask is needed (and none can leave a row with nothing to attend to).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ilora.encoders.base import SequentialEncoder, last_valid
from ilora.errors import ConfigError


class SASRec(SequentialEncoder):
    """`z = LN(Blocks(E[h] + P))[len - 1]`; logits `z E^T`."""

    name = "sasrec"

    def __init__(
        self, *, num_items: int, hidden_dim: int = 64, max_len: int = 10, num_blocks: int = 1, num_heads: int = 1,
        dropout: float = 0.1,
    ) -> None:
        super().__init__(num_items=num_items, hidden_dim=hidden_dim)
        if hidden_dim % num_heads:
            raise ConfigError(f"encoder.num_heads={num_heads} does not divide encoder.hidden_dim={hidden_dim}")
        self.max_len, self.num_blocks, self.num_heads, self.dropout = max_len, num_blocks, num_heads, dropout
        self.positions = nn.Embedding(max_len, hidden_dim)
        self.input_dropout = nn.Dropout(dropout)
        block = nn.TransformerEncoderLayer(
            hidden_dim, num_heads, dim_feedforward=hidden_dim, dropout=dropout, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(block, num_blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_dim)
        causal = torch.triu(torch.ones(max_len, max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", causal, persistent=False)

    def hparams(self) -> dict[str, Any]:
        return {"hidden_dim": self.hidden_dim, "max_len": self.max_len, "num_blocks": self.num_blocks,
                "num_heads": self.num_heads, "dropout": self.dropout}

    def _state(self, history: Tensor, lengths: Tensor) -> Tensor:
        """`history [B, W]` (W <= max_len), `lengths [B]` -> `[B, D]`."""
        w = history.shape[1]
        if w > self.max_len:
            raise ConfigError(f"history window {w} exceeds encoder.max_len={self.max_len}")
        x = self.items(history) + self.positions.weight[:w]  # [B, W, D]
        x = self.blocks(self.input_dropout(x), mask=self.causal[:w, :w], is_causal=True)  # [B, W, D]
        return last_valid(self.norm(x), lengths)
