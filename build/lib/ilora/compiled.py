"""`torch.compile` of the decoder blocks for training (`model.compile=true`).

Why per block and not the whole step: compiling each decoder layer's `forward` took ~15-20 s on a 2-core CPU
against 160-210 s for the whole step (issue 22's pilot), all layers share one compiled graph, and the
forward hooks that draw the keyed dropout masks stay outside the compiled region (`adapters.dropout`). Only
training forwards (grad enabled, module in train mode) take the compiled path: evaluation and generation
(no grad, growing KV caches, many shapes) stay eager.

Shapes: `model.compile_dynamic=true` (the default) compiles one graph for every sequence length; with `false` it
specialises on each batch's lengths, and the collator pads training batches to `model.pad_to_multiple_of` tokens
(the packed candidate rows likewise) so a run meets a handful of shapes. A block that receives a KV cache (the split
rank pass, `model.rank_method=split`) specialises on the layer index as well, so the recompile limit is raised to
cover every layer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ilora.errors import ConfigError


def decoder_blocks(model: nn.Module) -> list[nn.Module]:
    """The decoder's repeated blocks (`model.get_decoder().layers`, as Llama, Mistral, Qwen, SmolLM have)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ConfigError(f"model.compile=true needs a decoder with a `layers` list; {type(model).__name__} has none")
    return list(layers)


class _TrainingForward:
    """Calls the compiled forward while training with gradients, the eager one otherwise."""

    def __init__(self, module: nn.Module, eager: Any, compiled: Any) -> None:
        self.module, self.eager, self.compiled = module, eager, compiled

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.module.training and torch.is_grad_enabled():
            return self.compiled(*args, **kwargs)
        return self.eager(*args, **kwargs)


def compile_blocks(model: nn.Module, *, dynamic: bool | None = False, mode: str | None = None) -> int:
    """Compile each decoder block's training forward in place; returns the number of blocks."""
    blocks = decoder_blocks(model)
    config = torch._dynamo.config
    limit = max(int(config.recompile_limit), 8 * len(blocks))  # cache-taking blocks specialise per layer index
    config.recompile_limit = limit
    config.accumulated_recompile_limit = max(int(config.accumulated_recompile_limit), 4 * limit)
    for block in blocks:
        if isinstance(block.__dict__.get("forward"), _TrainingForward):
            continue
        eager = block.forward
        block.forward = _TrainingForward(block, eager, torch.compile(eager, dynamic=dynamic, mode=mode))
    return len(blocks)


def compile_stats() -> dict[str, int]:
    """Graphs compiled and graph breaks so far in this process (dynamo's counters)."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"].get("unique_graphs", 0)),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "frames": int(counters["stats"].get("calls_captured", 0))}
