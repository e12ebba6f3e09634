"""Dropout whose mask costs about a fifth of `nn.Dropout`'s on CPU.

`nn.Dropout` draws one Bernoulli sample per element (aten::bernoulli_): on a CPU that is ~12% of a whole
SmolLM2 LoRA training step, more than all the rank-r matmuls together. Here each random 64-bit word
gives four 15-bit uniforms (the generator's int64 draws carry 63 random bits), and an element is kept when
its uniform is >= round(p * 2^15); kept elements are scaled by 1 / (1 - p'), p' = round(p * 2^15) / 2^15,
so the output is unbiased. p is thus quantised to 1/32768 (0.1 -> 0.100006). A LoRA layer can take the
unscaled `mask(x)` and fold `scale` into its rank-r activations (r elements per token instead of `in`).
For p = 0 or in eval mode, the identity. On CUDA the same code runs with a CUDA generator (the recomputed
mask saves the same activation memory there); backward casts explicitly, so no autocast decorator (which is
tied to one device type) is needed.

`project(x, A)` = `mask(x) @ A.T` for a LoRA's rank-r down-projection without storing the dropped copy of
x for backward: the mask comes from a private generator seeded from the global stream, and backward
draws it again. Autograd would otherwise keep one dropped [tokens, in] copy per adapted projection plus
its bool mask (on SmolLM2 with all seven projections: ~40% of a training step's activation memory); now
only x is kept, and q/k/v (and gate/up) share the same x.

The mask is a 0/1 tensor in x's dtype and is applied by multiplication: on this PyTorch's CPU kernels a bool
mask costs more than the random draw itself (`masked_fill` with a bool mask ~360 us, `lt` to bool ~100 us,
against `ge(..., out=<float>)` ~43 us and a float `mul` ~42 us for 2 x 300 x 576 bf16 elements, one thread).
The keep decisions are the same as with a bool mask, element for element (tested).
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
        """Whether `mask` applies: training and p > 0 (on any device: the generator is x's device's)."""
        return self.training and self.threshold > 0

    @property
    def scale(self) -> float:
        """1 / (1 - p') for the quantised p': what `mask`'s output still has to be multiplied by."""
        return _LEVELS / (_LEVELS - self.threshold)

    def mask(self, x: Tensor) -> Tensor:
        """x with dropped elements zeroed, NOT rescaled (callers fold `scale` into a smaller tensor)."""
        return x * _keep_mask(x, self.threshold)

    def project(self, x: Tensor, weight: Tensor) -> Tensor:
        """`F.linear(self.mask(x), weight)` (unscaled), recomputing the mask in backward instead of saving it."""
        seed = int(torch.empty((), dtype=torch.int64).random_().item())  # advances the global stream as one draw
        return _DroppedLinear.apply(x, weight, seed, self.threshold)

    def forward(self, x: Tensor) -> Tensor:
        if not self.active(x):
            return x
        return self.mask(x) * self.scale


def _uniforms(x: Tensor, generator: torch.Generator | None) -> Tensor:
    """15-bit uniforms in [0, 2^15) shaped like x (int16), four from each random int64 word."""
    n = x.numel()
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(generator=generator)
    return words.view(torch.int16)[:n].view(x.shape) & (_LEVELS - 1)


def _drop_mask(x: Tensor, threshold: int, generator: torch.Generator | None = None) -> Tensor:
    """Bool mask shaped like x, True (drop) with probability threshold / 2^15 (the reference for `_keep_mask`)."""
    return _uniforms(x, generator) < threshold


def _keep_mask(x: Tensor, threshold: int, generator: torch.Generator | None = None) -> Tensor:
    """1 where `_drop_mask` (same generator state) keeps, else 0, in x's dtype: multiply, never index, with it."""
    return torch.ge(_uniforms(x, generator), threshold, out=torch.empty_like(x))


class _DroppedLinear(torch.autograd.Function):
    """h = mask(x) @ W.T, saving x (not the dropped copy) and the seed that regenerates the mask."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, seed: int, threshold: int) -> Tensor:
        keep = _keep_mask(x, threshold, torch.Generator(x.device).manual_seed(seed))
        ctx.save_for_backward(x, weight)
        ctx.seed, ctx.threshold = seed, threshold
        return F.linear(x * keep, weight)

    @staticmethod
    def backward(ctx, grad_h: Tensor):
        x, weight = ctx.saved_tensors
        keep = _keep_mask(x, ctx.threshold, torch.Generator(x.device).manual_seed(ctx.seed))
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_h @ weight.to(grad_h.dtype)).mul_(keep).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dropped = (x * keep).to(grad_h.dtype)
            grad_w = (grad_h.reshape(-1, grad_h.shape[-1]).T @ dropped.reshape(-1, x.shape[-1])).to(weight.dtype)
        return grad_x, grad_w, None, None
