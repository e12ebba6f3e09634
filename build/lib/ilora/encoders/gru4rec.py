"""GRU4Rec (Hidasi et al., 2016) as used by LLaRA: a GRU over item embeddings, its state at the last real step.

The GRU runs over the whole right-padded window and the output at `length - 1` is gathered: a GRU is causal,
so this equals the packed-sequence state without packing (which needs lengths >= 1 and a sort).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ilora.encoders.base import SequentialEncoder, last_valid


class GRU4Rec(SequentialEncoder):
    """`z = GRU(drop(E[h]))[len - 1]`; logits `z E^T`."""

    name = "gru4rec"

    def __init__(self, *, num_items: int, hidden_dim: int = 64, num_layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__(num_items=num_items, hidden_dim=hidden_dim)
        self.num_layers, self.dropout = num_layers, dropout
        self.input_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(hidden_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)
        self.output_dropout = nn.Dropout(dropout)

    def hparams(self) -> dict[str, Any]:
        return {"hidden_dim": self.hidden_dim, "num_layers": self.num_layers, "dropout": self.dropout}

    def _state(self, history: Tensor, lengths: Tensor) -> Tensor:
        """`history [B, W]`, `lengths [B]` -> `[B, D]`."""
        out, _ = self.gru(self.input_dropout(self.items(history)))  # [B, W, D]
        return self.output_dropout(last_valid(out, lengths))
