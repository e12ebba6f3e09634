"""Dropout whose mask costs about a fifth of `nn.Dropout`'s on CPU.

`nn.Dropout` draws one Bernoulli sample per element (aten::bernoulli_): on a CPU that is ~12% of a whole
SmolLM2 LoRA training step, more than all the rank-r matmuls together. Here each random 64-bit word
gives four 15-bit uniforms (the generator's int64 draws carry 63 random bits), and an element is kept when
its uniform is >= round(p * 2^15); kept elements are scaled by 1 / (1 - p'), p' = round(p * 2^15) / 2^15,
so the output is unbiased. p is thus quantised to 1/32768 (0.1 -> 0.100006). A LoRA layer can take the
unscaled `mask(x)` and fold `scale` into its rank-r activations (r elements per token instead of `in`).
Off the CPU it is `nn.functional.dropout`; for p = 0 or in eval mode, the identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 15


class FastDropout(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p} must be in [0, 1)")
        self.p = float(p)
        self.threshold = round(self.p * _LEVELS)

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def active(self, x: Tensor) -> bool:
        """Whether `mask` applies: training, p > 0, on the CPU (elsewhere forward is F.dropout)."""
        return self.training and self.threshold > 0 and x.device.type == "cpu"

    @property
    def scale(self) -> float:
        """1 / (1 - p') for the quantised p': what `mask`'s output still has to be multiplied by."""
        return _LEVELS / (_LEVELS - self.threshold)

    def mask(self, x: Tensor) -> Tensor:
        """x with dropped elements zeroed, NOT rescaled (callers fold `scale` into a smaller tensor)."""
        n = x.numel()
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_()
        uniform = words.view(torch.int16)[:n].view(x.shape) & (_LEVELS - 1)  # 15-bit uniforms in [0, 2^15)
        return x.masked_fill(uniform < self.threshold, 0.0)  # no float copy of the mask (x * bool makes one)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.threshold == 0:
            return x
        if not self.active(x):
            return F.dropout(x, self.p, True)
        return self.mask(x) * self.scale
