"""Cost of one MoE-LoRA layer relative to a peft LoRA layer of the same rank (forward + backward).

The stacked form should cost about what plain LoRA costs (target ratio <= 1.05); the einsum form of
the iLoRA reference code builds [B, T, K, out] and costs ~2x. Timings of the two layers are
interleaved repeat by repeat so that load from other processes hits both alike.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext

import torch
from torch import nn

from ilora.adapters.moe_lora import MoELoRALinear


def _peft_layer(base: nn.Linear, rank: int, alpha: float) -> nn.Module:
    from peft import LoraConfig, inject_adapter_in_model

    holder = nn.Module()
    holder.proj = base
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=["proj"], lora_dropout=0.0)
    return inject_adapter_in_model(cfg, holder).proj


def _time_pair(
    moe: nn.Module,
    ref: nn.Module,
    x: torch.Tensor,
    gate_logits: torch.Tensor,
    *,
    autocast,
    repeats: int,
    warmup: int,
) -> tuple[float, float]:
    """Median seconds of fwd+bwd for (moe, ref), interleaved per repeat."""

    def run_moe() -> None:
        moe.gate = torch.softmax(gate_logits, -1)
        moe(x).sum().backward()
        moe.gate = None

    def run_peft() -> None:
        ref(x).sum().backward()

    times: dict[str, list[float]] = {"moe": [], "peft": []}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with autocast:
        for i in range(warmup + repeats):
            for name, fn in (("moe", run_moe), ("peft", run_peft)):
                sync()
                start = time.perf_counter()
                fn()
                sync()
                if i >= warmup:
                    times[name].append(time.perf_counter() - start)
    return statistics.median(times["moe"]), statistics.median(times["peft"])


def layer_ratio(
    *,
    batch: int = 4,
    tokens: int = 340,
    in_features: int = 576,
    out_features: int = 1536,
    rank: int = 8,
    num_experts: int = 4,
    alpha: float = 32.0,
    repeats: int = 10,
    warmup: int = 3,
    modes: tuple[str, ...] = ("fp32", "bf16"),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Median fwd+bwd seconds of MoELoRALinear(K=num_experts) vs peft LoRA(r=rank) per mode.

    Modes: "fp32" (fp32 weights and input) and "bf16" (bf16 frozen base, bf16 input, CPU/CUDA
    autocast to bf16; adapters stay fp32 parameters in both). Returns
    {mode: {"moe_s": .., "peft_s": .., "ratio": moe_s / peft_s}}.
    """
    for mode in modes:
        if mode not in ("fp32", "bf16"):
            raise ValueError(f"layer_ratio: unknown mode {mode!r}, expected 'fp32' or 'bf16'")
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    results = {}
    for mode in modes:
        dtype = torch.bfloat16 if mode == "bf16" else torch.float32
        moe = MoELoRALinear(nn.Linear(in_features, out_features, device=device), rank, num_experts, alpha)
        moe.base.to(dtype)
        ref = _peft_layer(nn.Linear(in_features, out_features, device=device), rank, alpha)
        ref.base_layer.to(dtype).requires_grad_(False)
        for layer in (moe, ref):
            for p in layer.parameters():
                if p.requires_grad:
                    nn.init.normal_(p, std=0.02)
        x = torch.randn(batch, tokens, in_features, device=device, dtype=dtype, requires_grad=True)
        gate_logits = torch.randn(batch, num_experts, device=device, requires_grad=True)
        autocast = torch.autocast(device, dtype=torch.bfloat16) if mode == "bf16" else nullcontext()
        moe_s, peft_s = _time_pair(
            moe, ref, x, gate_logits, autocast=autocast, repeats=repeats, warmup=warmup
        )
        results[mode] = {"moe_s": moe_s, "peft_s": peft_s, "ratio": moe_s / peft_s}
    return results


if __name__ == "__main__":
    for mode, r in layer_ratio().items():
        print(
            f"{mode}: moe {r['moe_s'] * 1e3:.2f} ms  peft {r['peft_s'] * 1e3:.2f} ms  ratio {r['ratio']:.3f}"
        )
