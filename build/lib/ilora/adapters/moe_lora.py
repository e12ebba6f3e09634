"""Mixture-of-experts LoRA layer (iLoRA) and its gate plumbing.

One LoRA of rank r is split into K experts of rank r/K along the rank axis. A per-sequence gate
g [B, K] weights the experts; because the experts are disjoint slices of one stacked A and B, the
mixture is computed as one LoRA whose rank-space activations are scaled by repeat_interleave(g, r/K):
    y = W x + s * B ((A drop(x)) * repeat_interleave(g, r/K))
which is exactly sum_k g_k s B_k A_k x, costs ~1x a plain LoRA, and never builds [B, T, K, out].

The gate is not an argument of `forward` (transformers would have to thread it through every
decoder layer); `gate_context` stores it on the layers for the duration of a block instead, which
also works inside `model.generate` with a KV cache (the gate is per sequence, fixed across steps).
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ilora.adapters.dropout import DropoutMasks, FastDropout, masked_linear
from ilora.errors import ConfigError
from ilora.state import check_state_fits

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCALINGS = ("expert", "rank")


class MoELoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a K-expert LoRA mixed by a per-sequence gate.

    Equation (x [B, T, in] or [B, in], gate [B, K]):
        y = base(x) + s * ((drop(x) @ A.T) * repeat_interleave(gate, r/K)[:, None, :]) @ B.T
    with `lora_A` (r, in) and `lora_B` (out, r) trainable fp32 parameters; expert k owns rows
    k*r/K .. (k+1)*r/K of A and the same columns of B. A is Kaiming-uniform (a=sqrt(5)) and B is
    zero, so a fresh layer equals its base exactly and training starts from the pretrained model.
    Scaling s = alpha / (r/K) for scaling="expert" (what the iLoRA reference code does: each expert
    is a LoRA of rank r/K) or alpha / r for scaling="rank" (the whole stack as one LoRA).

    Gate: set by `gate_context`. Without one, K == 1 is plain LoRA (gate = 1) and K > 1 raises.
    If x's batch is m times the gate's batch (beams, num_return_sequences, repeated candidate
    rows), each gate row is repeated m times (repeat_interleave), matching how generate expands.

    Precision: A and B stay fp32 parameters; under autocast the matmuls run in the autocast dtype,
    otherwise x is cast to fp32 for the low-rank path. The output has the base output's dtype.

    Merging folds s * B diag(g) A into the base weight for ONE user (gate [1, K]); a copy of the
    original weight is kept so that `unmerge` restores it bit-exactly. While merged, forward skips
    the LoRA path (the gate is ignored), so merged layers serve a single user only.
    """

    adapter_parameter_names = ("lora_A", "lora_B")

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        num_experts: int,
        alpha: float,
        dropout: float = 0.0,
        scaling: str = "expert",
    ) -> None:
        super().__init__()
        _check_hparams(rank=rank, num_experts=num_experts, alpha=alpha, dropout=dropout, scaling=scaling)
        if not isinstance(base, nn.Linear):
            raise ConfigError(f"MoELoRALinear wraps nn.Linear, got {type(base).__name__}")
        self.base = base
        self.base.requires_grad_(False)
        self.rank = int(rank)
        self.num_experts = int(num_experts)
        self.alpha = float(alpha)
        self.scaling_mode = scaling
        self.expert_rank = self.rank // self.num_experts
        self.scaling = self.alpha / (self.expert_rank if scaling == "expert" else self.rank)
        device = base.weight.device
        self.lora_A = nn.Parameter(
            torch.empty(self.rank, base.in_features, device=device, dtype=torch.float32)
        )
        self.lora_B = nn.Parameter(
            torch.zeros(base.out_features, self.rank, device=device, dtype=torch.float32)
        )
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = FastDropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout_keep: Tensor | None = None  # this call's keep mask, set by the block's DropoutMasks hook
        self.gate: Tensor | None = None  # [B, K], set by gate_context; a plain attribute, never saved
        # The gate of the last forward that built a graph: activation checkpointing re-runs forward during
        # backward, after the gate_context has closed; only such re-runs (inside backward) fall back to it.
        self._graph_gate: Tensor | None = None
        self.adapters_disabled = False
        self.merged = False
        self._unmerged_weight: Tensor | None = None

    def dropout_active(self) -> bool:
        return isinstance(self.dropout, FastDropout) and self.dropout.active() and not self.merged \
            and not self.adapters_disabled

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def extra_repr(self) -> str:
        return (
            f"rank={self.rank}, num_experts={self.num_experts}, alpha={self.alpha}, "
            f"scaling={self.scaling_mode}({self.scaling:g}), merged={self.merged}"
        )

    def forward(self, x: Tensor) -> Tensor:
        """x [B, T, in] or [B, in] -> [B, T, out] or [B, out]; gate [B', K] with B = m * B'."""
        if self.adapters_disabled:
            if self.merged:  # the base weight holds the merged delta: use the saved original
                return F.linear(x, self._unmerged_weight, self.base.bias)
            return self.base(x)
        y = self.base(x)
        if self.merged:
            return y
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.lora_A.dtype)
        if self.dropout_active():  # the 1/(1-p) rescale moves to the r-dim side
            keep = self.dropout_keep if self.dropout_keep is not None else self.dropout.draw(x)
            if keep.shape != x.shape:
                raise ConfigError(f"dropout mask {list(keep.shape)} does not match the input {list(x.shape)} of "
                                  f"{self.extra_repr()}: projections sharing a mask must read the same input")
            h, drop_scale = masked_linear(x, keep, self.lora_A), self.dropout.scale  # [B, T, r]
        else:
            h, drop_scale = F.linear(x, self.lora_A), 1.0
        g = self._rank_gate(x)  # [B, 1, r] with the scaling folded in, or None (K == 1, no gate)
        h = h * (self.scaling * drop_scale) if g is None else h * (g * drop_scale).to(h.dtype)
        return y + F.linear(h, self.lora_B).to(y.dtype)  # [B, T, out]

    def _rank_gate(self, x: Tensor) -> Tensor | None:
        """Scaled gate in rank space, shaped to broadcast against x: [B, 1.., r] (None: K=1, no gate)."""
        gate = self.gate
        if gate is None and self._graph_gate is not None and torch._C._current_graph_task_id() != -1:
            gate = self._graph_gate  # a checkpointed layer re-running its forward during backward
        elif gate is not None and torch.is_grad_enabled():
            self._graph_gate = gate
        if gate is None:
            if self.num_experts == 1:
                return None
            raise ConfigError(
                f"MoELoRALinear has num_experts={self.num_experts} but no gate is set: "
                "run the model inside `with gate_context(model, gate):`"
            )
        rows = x.shape[0]
        if rows != gate.shape[0]:
            if gate.shape[0] == 0 or rows % gate.shape[0] != 0:
                raise ConfigError(
                    f"input batch {rows} is not a multiple of the gate batch {gate.shape[0]} "
                    "(gate_context must receive one gate row per sequence)"
                )
            gate = gate.repeat_interleave(rows // gate.shape[0], dim=0)
        g = gate.repeat_interleave(self.expert_rank, dim=1) * self.scaling  # [B, K] -> [B, r]
        return g.view(rows, *([1] * (x.dim() - 2)), self.rank)

    def delta_weight(self, gate: Tensor | None = None) -> Tensor:
        """s * B diag(repeat_interleave(g, r/K)) A as [out, in] fp32 for one gate row [1, K] (or None if K == 1)."""
        if gate is None:
            if self.num_experts != 1:
                raise ConfigError(
                    f"merge needs a gate [1, {self.num_experts}] for num_experts={self.num_experts}"
                )
            g = torch.ones(self.rank, device=self.lora_A.device)
        else:
            if gate.dim() != 2 or gate.shape[0] != 1 or gate.shape[1] != self.num_experts:
                raise ConfigError(
                    f"merge folds one user's gate at a time: expected gate shape [1, {self.num_experts}], "
                    f"got {list(gate.shape)}"
                )
            g = gate[0].to(self.lora_A).repeat_interleave(self.expert_rank)
        return (self.lora_B * (g * self.scaling)) @ self.lora_A

    @torch.no_grad()
    def merge(self, gate: Tensor | None = None) -> None:
        """Fold this user's LoRA delta into the base weight (gate [1, K]; None allowed when K == 1)."""
        if self.merged:
            raise ConfigError("MoELoRALinear is already merged: call unmerge() before merging another gate")
        delta = self.delta_weight(gate)
        self._unmerged_weight = self.base.weight.detach().clone()
        self.base.weight.add_(delta.to(self.base.weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the original base weight exactly (from the copy kept by `merge`)."""
        if not self.merged:
            raise ConfigError("MoELoRALinear is not merged: nothing to unmerge")
        self.base.weight.copy_(self._unmerged_weight)
        self._unmerged_weight = None
        self.merged = False


def _check_hparams(*, rank: int, num_experts: int, alpha: float, dropout: float, scaling: str) -> None:
    """Reject impossible adapter settings at construction, naming the config key to change."""
    if int(rank) != rank or rank < 1:
        raise ConfigError(f"adapter.rank={rank} must be a positive integer")
    if int(num_experts) != num_experts or num_experts < 1:
        raise ConfigError(f"adapter.num_experts={num_experts} must be a positive integer")
    if rank % num_experts != 0:
        raise ConfigError(f"adapter.num_experts={num_experts} does not divide adapter.rank={rank}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"adapter.dropout={dropout} must be in [0, 1)")
    if scaling not in SCALINGS:
        raise ConfigError(f"adapter.scaling={scaling!r} must be one of {list(SCALINGS)}")
    if not math.isfinite(alpha):
        raise ConfigError(f"adapter.alpha={alpha} must be a finite number")


# ----------------------------------------------------------------------------- layer discovery

_LAYER_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[int, list[tuple[str, MoELoRALinear]]]] = (
    weakref.WeakKeyDictionary()
)
_INJECTION_VERSION = [0]  # bumped by apply_moe_lora so cached layer lists go stale


def moe_lora_layers(module: nn.Module) -> list[tuple[str, MoELoRALinear]]:
    """(name, layer) for every MoELoRALinear inside `module`, names as in `module.named_modules()`.

    Cached per module (weakly) so that setting a gate every step costs a list walk, not a tree walk.
    """
    hit = _LAYER_CACHE.get(module)
    if hit is not None and hit[0] == _INJECTION_VERSION[0]:
        return hit[1]
    layers = [(n, m) for n, m in module.named_modules() if isinstance(m, MoELoRALinear)]
    _LAYER_CACHE[module] = (_INJECTION_VERSION[0], layers)
    return layers


@contextmanager
def gate_context(module: nn.Module, gate: Tensor | Mapping[str, Tensor]) -> Iterator[None]:
    """Set the expert gate on every MoELoRALinear inside `module` for the block, restore on exit.

    gate: one tensor [B, K] shared by all layers (the iLoRA default), or a mapping from layer name
    (as in `module.named_modules()`, e.g. "model.layers.0.self_attn.q_proj") to a [B, K] tensor for
    one gate per layer; the mapping must name every MoE-LoRA layer and nothing else.
    Previous gates (None outside any context) are restored even if the block raises, so contexts nest.
    """
    layers = moe_lora_layers(module)
    if not layers:
        raise ConfigError("gate_context: no MoELoRALinear inside the module (was apply_moe_lora called?)")
    if isinstance(gate, Mapping):
        names = {n for n, _ in layers}
        missing, unknown = names - gate.keys(), gate.keys() - names
        if missing or unknown:
            raise ConfigError(
                f"gate_context: per-layer gates must name every MoE-LoRA layer; "
                f"missing {sorted(missing)[:3]}, unknown {sorted(unknown)[:3]}"
            )
        assignment = [(layer, gate[n]) for n, layer in layers]
    else:
        assignment = [(layer, gate) for _, layer in layers]
    for layer, g in assignment:
        if not isinstance(g, Tensor) or g.dim() != 2 or g.shape[1] != layer.num_experts:
            shape = list(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ConfigError(f"gate_context: expected a gate [B, {layer.num_experts}], got {shape}")
    previous = [layer.gate for _, layer in layers]
    try:
        for layer, g in assignment:
            layer.gate = g
        yield
    finally:
        for (_, layer), old in zip(layers, previous):
            layer.gate = old


@contextmanager
def disable_adapters(module: nn.Module) -> Iterator[None]:
    """Inside the block every MoE-LoRA layer returns exactly its frozen base output (merged or not)."""
    layers = [layer for _, layer in moe_lora_layers(module)]
    previous = [layer.adapters_disabled for layer in layers]
    try:
        for layer in layers:
            layer.adapters_disabled = True
        yield
    finally:
        for layer, old in zip(layers, previous):
            layer.adapters_disabled = old


def merge(module: nn.Module, gate: Tensor | None = None) -> None:
    """Merge one user's gate [1, K] into every MoE-LoRA layer of `module` (see MoELoRALinear.merge)."""
    layers = [layer for _, layer in moe_lora_layers(module)]
    if any(layer.merged for layer in layers):
        raise ConfigError("merge: some MoE-LoRA layers are already merged; call unmerge(module) first")
    for layer in layers:
        layer.merge(gate)


def unmerge(module: nn.Module) -> None:
    """Undo `merge` on every merged MoE-LoRA layer of `module`, restoring the original weights exactly."""
    for _, layer in moe_lora_layers(module):
        if layer.merged:
            layer.unmerge()


# ----------------------------------------------------------------------------- injection


def apply_moe_lora(
    model: nn.Module,
    *,
    rank: int,
    num_experts: int,
    alpha: float,
    dropout: float = 0.0,
    targets: Sequence[str] = DEFAULT_TARGETS,
    target_regex: str | None = None,
    scaling: str = "expert",
    dropout_seed: int = 0,
) -> list[str]:
    """Replace matching nn.Linear modules by MoELoRALinear and freeze everything else.

    A module matches when its name ends with one of `targets` (".q_proj" or exactly "q_proj"), or,
    when `target_regex` is given, when the regex matches its full name (re.fullmatch, as peft does;
    `targets` is then ignored). Layers already wrapped are skipped. Afterwards only lora_* tensors of
    `model` require grad. With dropout > 0 the model gets keyed dropout masks (`adapters.dropout.DropoutMasks`,
    seeded by `dropout_seed`; reach it with `dropout_masks(model)`). Returns the replaced module names.
    """
    _check_hparams(rank=rank, num_experts=num_experts, alpha=alpha, dropout=dropout, scaling=scaling)
    if target_regex is not None:
        try:
            pattern = re.compile(target_regex)
        except re.error as e:
            raise ConfigError(f"adapter.target_regex={target_regex!r} is not a valid regex: {e}") from e

        def matches(name: str) -> bool:
            return pattern.fullmatch(name) is not None
    else:
        suffixes = tuple(targets)
        if isinstance(targets, str) or not suffixes:
            raise ConfigError(f"adapter.targets={targets!r} must be a non-empty list of module names")

        def matches(name: str) -> bool:
            return name.rsplit(".", 1)[-1] in suffixes

    wrapped_bases = {id(m.base) for m in model.modules() if isinstance(m, MoELoRALinear)}
    linears = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m) not in wrapped_bases
    ]
    chosen = [n for n, _ in linears if matches(n)]
    if not chosen:
        available = sorted({n.rsplit(".", 1)[-1] for n, _ in linears})[:12]
        setting = (
            f"adapter.target_regex={target_regex!r}" if target_regex else f"adapter.targets={list(targets)}"
        )
        raise ConfigError(f"{setting} matches no nn.Linear module; available names include {available}")
    model.requires_grad_(False)
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MoELoRALinear(
            getattr(parent, child), rank, num_experts, alpha, dropout=dropout, scaling=scaling
        )
        setattr(parent, child, layer)
    _INJECTION_VERSION[0] += 1
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, MoELoRALinear)
              and isinstance(m.dropout, FastDropout)]
    if layers:
        model._ilora_dropout_masks = DropoutMasks(model, layers, seed=dropout_seed)
    return chosen


# ----------------------------------------------------------------------------- trainable state


def adapter_state_dict(module: nn.Module) -> dict[str, Tensor]:
    """Only the adapter tensors (lora_A, lora_B of every MoE-LoRA layer), keyed like module.state_dict()."""
    state = {}
    for name, layer in moe_lora_layers(module):
        prefix = f"{name}." if name else ""
        for p in layer.adapter_parameter_names:
            state[prefix + p] = getattr(layer, p).detach()
    return state


def load_adapter_state_dict(module: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Copy adapter tensors into `module`; strict on adapter keys, CheckpointError on any mismatch."""
    own = adapter_state_dict(module)
    check_state_fits(state_dict, {k: v.shape for k, v in own.items()}, what="adapter checkpoint",
                     hint="check adapter.rank / adapter.num_experts / adapter.targets")
    with torch.no_grad():
        for key, target in own.items():
            target.copy_(state_dict[key])


def trainable_parameters(module: nn.Module) -> list[nn.Parameter]:
    """Parameters of `module` with requires_grad, in named_parameters order (ready for an optimizer)."""
    return [p for _, p in module.named_parameters() if p.requires_grad]


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) element counts; shared (tied) parameters are counted once."""
    params = list(module.parameters())  # parameters() already de-duplicates shared tensors
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
