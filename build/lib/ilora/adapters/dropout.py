"""LoRA dropout with keyed masks: each mask is a pure function of where it is used, never of a global stream.

Why keyed: a mask drawn from torch's global generator depends on every draw made before it (a validation run,
a DataLoader iterator), so a resumed run cannot replay it; and a seed read with `.item()` breaks a
`torch.compile` graph at every adapted projection. Here a mask's seed is
`mix64(run seed, optimiser step, micro-batch, block, call, group)` (`DropoutMasks.at` sets the first three), so a
resumed run draws exactly the masks of the uninterrupted one, and the masks are drawn eagerly in a forward
pre-hook of each decoder block, outside any compiled region, then applied inside it.

One mask per input, not per projection: q/k/v read the same normalised hidden state, and so do gate/up; each
group shares one mask (`SHARED_INPUTS`), as a LoRA on a fused qkv (or gate-up) projection has it. Projections
outside those groups (o_proj, down_proj, any other) each get their own. This cuts the mask volume by a third
(5 x 576 + 576 + 1536 -> 3 x 576 + 1536 elements per token and SmolLM2 layer). Every method (LoRA, iLoRA, any K)
uses the same rule.

The bits: each random int64 word gives four 15-bit uniforms (the generator's int64 draws carry 63 random bits),
and an element is kept when its uniform is >= round(p * 2^15). p is thus quantised to 1/32768 (0.1 -> 0.100006)
and kept elements are scaled by 1 / (1 - p') (`FastDropout.scale`; a LoRA folds it into its rank-r activations).
The mask is a 0/1 tensor in the compute dtype applied by multiplication: on this PyTorch's CPU kernels a bool
mask costs more than the random draw itself (`masked_fill` ~360 us against a float `mul` ~42 us for 2 x 300 x 576
bf16 elements, one thread). The generator is mt19937 on the CPU (Philox on CUDA), one per device, re-seeded per
mask: bulk draws from a fast generator beat any hash computed per element (measured, issue 22).

Memory: `masked_linear` keeps x (which the frozen projection keeps anyway, shared by the group) and the group's
keep mask for backward, not a dropped copy of x per projection.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_LEVELS = 1 << 15
_MASK64 = (1 << 64) - 1
# projections that read the same input inside one decoder block share one dropout mask
SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
_BLOCK = re.compile(r"^(.*?\b(?:layers|h|blocks)\.\d+)\.")


def mix64(*words: int) -> int:
    """A 63-bit seed from integers (splitmix64 rounds): distinct keys give unrelated generator streams."""
    state = 0x9E3779B97F4A7C15
    for w in words:
        state = (state ^ (int(w) & _MASK64)) * 0xBF58476D1CE4E5B9 & _MASK64
        state = (state ^ (state >> 31)) * 0x94D049BB133111EB & _MASK64
        state ^= state >> 29
    return state >> 1


def keep_mask(shape: tuple[int, ...], threshold: int, generator: torch.Generator, *, dtype: torch.dtype,
              device: torch.device | str) -> Tensor:
    """0/1 in `dtype`, shaped `shape`: 0 with probability threshold / 2^15 (four 15-bit uniforms per int64 word)."""
    n = math.prod(shape)
    words = torch.empty((n + 3) // 4, dtype=torch.int64, device=device).random_(generator=generator)
    uniforms = words.view(torch.int16)[:n].view(shape) & (_LEVELS - 1)
    return torch.ge(uniforms, threshold, out=torch.empty(shape, dtype=dtype, device=device))


class _Generators:
    """One generator per device, re-seeded for every mask (building one per mask costs more than the seed)."""

    def __init__(self) -> None:
        self._by_device: dict[str, torch.Generator] = {}

    def seeded(self, device: torch.device, seed: int) -> torch.Generator:
        key = str(device)
        if key not in self._by_device:
            self._by_device[key] = torch.Generator(device)
        return self._by_device[key].manual_seed(seed)


class FastDropout(nn.Module):
    """p, its 1/32768 quantisation and the rescale; `forward` is plain dropout for standalone use.

    Inside `apply_moe_lora`'s model the masks come from `DropoutMasks`; a layer used on its own draws keyed masks
    itself, from (`seed`, the count of its training calls).
    """

    def __init__(self, p: float, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p} must be in [0, 1)")
        self.p = float(p)
        self.threshold = round(self.p * _LEVELS)
        self.seed, self.calls = int(seed), 0
        self._generators = _Generators()

    def extra_repr(self) -> str:
        return f"p={self.p}"

    def active(self) -> bool:
        """Whether masks apply: training and p > 0."""
        return self.training and self.threshold > 0

    @property
    def scale(self) -> float:
        """1 / (1 - p') for the quantised p': what a masked input still has to be multiplied by."""
        return _LEVELS / (_LEVELS - self.threshold)

    def draw(self, x: Tensor) -> Tensor:
        """The next keep mask shaped like x (in x's dtype) of this standalone layer."""
        generator = self._generators.seeded(x.device, mix64(self.seed, self.calls))
        self.calls += 1
        return keep_mask(tuple(x.shape), self.threshold, generator, dtype=x.dtype, device=x.device)

    def forward(self, x: Tensor) -> Tensor:
        if not self.active():
            return x
        return x * self.draw(x) * self.scale


class _MaskedLinear(torch.autograd.Function):
    """h = (x * keep) @ W.T, saving x and keep (not the dropped copy of x: q/k/v share x and keep)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, keep: Tensor, weight: Tensor) -> Tensor:
        ctx.save_for_backward(x, keep, weight)
        return F.linear(x * keep, weight)

    @staticmethod
    def backward(ctx: Any, grad_h: Tensor):
        x, keep, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad_h @ weight.to(grad_h.dtype)).mul_(keep.to(grad_h.dtype)).to(x.dtype)
        if ctx.needs_input_grad[2]:
            dropped = (x * keep).to(grad_h.dtype)
            grad_w = (grad_h.reshape(-1, grad_h.shape[-1]).T @ dropped.reshape(-1, x.shape[-1])).to(weight.dtype)
        return grad_x, None, grad_w


def masked_linear(x: Tensor, keep: Tensor, weight: Tensor) -> Tensor:
    """`F.linear(x * keep, weight)` under the current autocast, keeping x and keep (not x * keep) for backward."""
    if torch.is_autocast_enabled(x.device.type):  # custom Functions see no autocast: cast as F.linear would
        dtype = torch.get_autocast_dtype(x.device.type)
        with torch.autocast(x.device.type, enabled=False):
            return _MaskedLinear.apply(x.to(dtype), keep.to(dtype), weight.to(dtype))
    return _MaskedLinear.apply(x, keep.to(x.dtype), weight)


def _group_name(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    for group in SHARED_INPUTS:
        if leaf in group:
            return name[: len(name) - len(leaf)] + "+".join(group)
    return name


class DropoutMasks:
    """The keyed masks of one model: a pre-hook on each decoder block draws its groups' masks for that call.

    `at(step, micro_batch)` sets the key's position (the LightningModule calls it before every training
    micro-batch); without it the calls still get distinct keys (a running count per block), so a model used
    outside the Trainer trains with fresh masks too. A block re-run by activation checkpointing during backward
    uses the masks of its forward call again (they stay on its layers). The hooks read everything from the block's
    own attributes, so a deep copy of the model carries a working copy of its plan.
    """

    def __init__(self, model: nn.Module, layers: Iterable[tuple[str, nn.Module]], seed: int = 0) -> None:
        self.seed, self.step, self.micro = int(seed), 0, 0
        self._calls: dict[int, int] = {}
        self._generators = _Generators()
        blocks: dict[str, list[tuple[str, nn.Module]]] = {}
        for name, layer in layers:
            match = _BLOCK.match(name)
            blocks.setdefault(match.group(1) if match else name, []).append((name, layer))
        for index, (block_name, members) in enumerate(sorted(blocks.items(), key=lambda kv: _natural(kv[0]))):
            block = model.get_submodule(block_name) if block_name else model
            groups: dict[str, list[nn.Module]] = {}
            for name, layer in members:
                groups.setdefault(_group_name(name), []).append(layer)
            if getattr(block, "_ilora_dropout", None) is None:
                block.register_forward_pre_hook(_block_pre_hook, with_kwargs=True)
                block.register_forward_hook(_block_post_hook)
            block._ilora_dropout = (self, index, list(groups.values()))

    def at(self, step: int, micro_batch: int) -> None:
        """Key the next calls' masks by (optimiser step, micro-batch)."""
        self.step, self.micro = int(step), int(micro_batch)
        self._calls.clear()

    def masks_for(self, index: int, hidden: Tensor, groups: list[list[nn.Module]]) -> list[Tensor]:
        call = self._calls.get(index, 0)
        self._calls[index] = call + 1
        device = hidden.device
        dtype = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else hidden.dtype
        lead = tuple(hidden.shape[:-1])
        masks = []
        for g, layers in enumerate(groups):
            first = layers[0]
            generator = self._generators.seeded(device, mix64(self.seed, self.step, self.micro, index, call, g))
            masks.append(keep_mask((*lead, first.in_features), first.dropout.threshold, generator,
                                   dtype=dtype, device=device))
        return masks


def _block_pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    plan, index, groups = module._ilora_dropout
    active = [g for g in groups if g[0].dropout_active()]
    if not active:
        _clear(groups)
        return
    hidden = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    for keep, layers in zip(plan.masks_for(index, hidden, active), active):
        for layer in layers:
            layer.dropout_keep = keep


def _block_post_hook(module: nn.Module, args: tuple, output: Any) -> None:
    # transformers' activation checkpointing wraps `forward` (the hooks stay outside it) and re-runs it during
    # backward: a checkpointed block keeps its masks on its layers until its next call replaces them
    if not getattr(module, "gradient_checkpointing", False):
        _clear(module._ilora_dropout[2])


def _clear(groups: list[list[nn.Module]]) -> None:
    for layers in groups:
        for layer in layers:
            layer.dropout_keep = None


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def dropout_masks(model: nn.Module) -> DropoutMasks | None:
    """The model's keyed-mask plan (set by `apply_moe_lora` when dropout > 0), or None."""
    return getattr(model, "_ilora_dropout_masks", None)
