"""`make bench-gpu`: the CPU bench's ratios on CUDA bf16, MovieLens throughput, and a Llama-2-7B-shaped iLoRA.

Sized to finish within 10 minutes on one H100:
1. SmolLM2-135M (the embedded weights) in bf16: MoE-LoRA layer vs peft layer, training step iLoRA K=4 / K=1
   vs peft LoRA r=8 (B=8, T=340), FLOP utilisation against a bf16 GEMM peak measured in the same loop,
   samples/s and an epoch-time estimate for the MovieLens train split.
2. A Llama-2-7B-shaped model, randomly initialised directly on the GPU in bf16 (no weights needed), iLoRA
   K=4 r=8 on all seven projections: step time and peak memory at micro-batch 1, 4 and 8, with and without
   gradient checkpointing.
`--dry-run` runs the same code on the CPU with tiny shapes (the test suite runs it so it cannot rot).

    python experiments/bench/bench_gpu.py --out outputs/bench_gpu            # on a GPU machine
    python experiments/bench/bench_gpu.py --dry-run --out /tmp/bench_gpu     # anywhere, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from ilora.adapters import apply_moe_lora, gate_context
from ilora.adapters.bench import layer_ratio
from ilora.backbones import load_backbone, tiny_random_model
from ilora.bench.step import answer_loss, step_ratio, synthetic_batch
from ilora.bench.timing import machine, synchronize

ROOT = Path(__file__).resolve().parents[2]
LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4, vocab_size=512, max_position_embeddings=512)


def movielens_train_examples() -> int:
    meta = json.loads((ROOT / "data" / "movielens" / "meta.json").read_text())
    return int(meta["splits"]["train"])


def smollm2_shape() -> dict[str, object]:
    """SmolLM2-135M's LlamaConfig fields, from conf/backbone/smollm2_shape.yaml (random weights, same shape)."""
    import yaml

    config = yaml.safe_load((ROOT / "conf" / "backbone" / "smollm2_shape.yaml").read_text())
    return {k: v for k, v in config.items() if k not in ("kind", "dtype", "device", "seed", "cache_dir")}


def smollm2_part(*, device: str, dry_run: bool, repeats: int, random_weights: bool = False) -> dict[str, float]:
    """Layer and step ratios in bf16 (fp32 tiny on the CPU dry run), samples/s and the MovieLens epoch estimate.
    `random_weights`: SmolLM2's shape initialised at random (the timings do not depend on the weights' values)."""
    dtype = torch.float32 if dry_run else torch.bfloat16
    if random_weights and not dry_run:
        lm = tiny_random_model(49152, dtype=dtype, **smollm2_shape()).to(device)
        shape = dict(batch=8, tokens=340, answer=12)
        layer = layer_ratio(repeats=50, warmup=10, modes=("bf16",))["bf16"]
    elif dry_run:
        lm = tiny_random_model(512, dtype=dtype)
        shape = dict(batch=2, tokens=24, answer=4)
        layer = layer_ratio(batch=2, tokens=8, in_features=16, out_features=24, repeats=2, warmup=1,
                            modes=("fp32",))["fp32"]
    else:
        lm, _ = load_backbone("smollm2_135m", dtype="bfloat16", device=device)
        shape = dict(batch=8, tokens=340, answer=12)
        layer = layer_ratio(repeats=50, warmup=10, modes=("bf16",))["bf16"]
    out = {"layer_ratio": layer["ratio"], "layer_s_moe": layer["moe_s"], "layer_s_peft": layer["peft_s"]}
    out.update(step_ratio(lm, repeats=repeats, warmup=2, peak_size=256 if dry_run else 8192,
                          autocast=None if dry_run else torch.bfloat16, **shape))
    out["samples_per_s"] = shape["batch"] / out["step_s_ilora"]
    out["movielens_train_examples"] = movielens_train_examples()
    out["movielens_epoch_s_estimate"] = out["movielens_train_examples"] / out["samples_per_s"]
    return out


def llama_part(*, device: str, dry_run: bool, micro_batches: tuple[int, ...], tokens: int,
               repeats: int) -> list[dict[str, object]]:
    """Step time and peak memory of a randomly initialised Llama-2-7B shape (tiny on the dry run) with iLoRA K=4."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dtype = torch.float32 if dry_run else torch.bfloat16
    config = LlamaConfig(**(TINY_LLAMA if dry_run else LLAMA2_7B))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)  # built in place on the device: no CPU copy, no weights file
    finally:
        torch.set_default_dtype(previous)
    apply_moe_lora(model, rank=8, num_experts=4, alpha=32, dropout=0.1)  # freezes the rest
    rows = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        for mb in micro_batches:
            row: dict[str, object] = {"micro_batch": mb, "tokens": tokens, "checkpointing": checkpointing}
            data = synthetic_batch(batch=mb, tokens=tokens, answer=12, vocab=config.vocab_size, device=device)
            try:
                run = _adapted_step(model, data, dry_run)
                if device == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for i in range(2 + repeats):
                    synchronize(device)
                    start = time.perf_counter()
                    run()
                    synchronize(device)
                    if i >= 2:
                        times.append(time.perf_counter() - start)
                row["step_s"] = statistics.median(times)
                row["samples_per_s"] = mb / row["step_s"]
                if device == "cuda":
                    row["peak_mem_gb"] = torch.cuda.max_memory_allocated() / 1e9
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
                if device == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def _adapted_step(model, data, dry_run):
    """A training-step closure on an already-adapted model for a new batch (new optimizer over the same LoRA)."""
    params = [p for p in model.parameters() if p.requires_grad]
    gate = torch.nn.Linear(64, 4, device=data["input_ids"].device)
    users = torch.randn(data["input_ids"].shape[0], 64, device=data["input_ids"].device)
    opt = torch.optim.AdamW(params + list(gate.parameters()), lr=2e-4)
    model.train()
    device = data["input_ids"].device.type
    autocast = torch.autocast(device, dtype=torch.bfloat16) if not dry_run else torch.autocast(device, enabled=False)

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        # backward inside the gate context: with checkpointing the layers are re-run during backward
        with gate_context(model, torch.softmax(gate(users).float(), -1)):
            with autocast:
                loss = answer_loss(model, data)
            loss.backward()
        opt.step()
        return loss.item()

    return run


def main(argv: list[str] | None = None) -> dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/bench_gpu")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, seconds")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--random-weights", action="store_true",
                   help="SmolLM2's shape at random instead of the embedded weights (a machine without the GGUF)")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("bench_gpu: no CUDA device; use --dry-run to check the script on the CPU")
    device = "cpu" if args.dry_run else "cuda"
    if args.dry_run:
        torch.set_num_threads(1)
    torch.manual_seed(0)
    started = time.perf_counter()
    results: dict[str, object] = {"machine": machine(), "dry_run": args.dry_run}
    results["smollm2"] = smollm2_part(device=device, dry_run=args.dry_run, repeats=args.repeats,
                                      random_weights=args.random_weights)
    results["smollm2_weights"] = "random (same shape)" if args.random_weights else "embedded GGUF"
    print(json.dumps(results["smollm2"]), flush=True)
    results["llama2_7b_shape"] = llama_part(
        device=device, dry_run=args.dry_run, micro_batches=(1, 2) if args.dry_run else (1, 4, 8),
        tokens=24 if args.dry_run else 340, repeats=2 if args.dry_run else args.repeats)
    results["bench_s"] = time.perf_counter() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_gpu.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "bench_gpu.md").write_text(markdown(results))
    print(markdown(results))
    return results


def markdown(results: dict) -> str:
    s = results["smollm2"]
    lines = [f"| SmolLM2-135M ({results.get('smollm2_weights', 'embedded GGUF')} weights) | value |", "|---|---|"]
    for key in ("layer_ratio", "step_ratio_vs_peft", "step_ratio_k1_vs_peft", "flop_utilisation", "samples_per_s",
                "movielens_epoch_s_estimate", "step_s_ilora", "step_s_peft", "peak_flops"):
        lines.append(f"| `{key}` | {s[key]:.4g} |")
    lines += ["", "| Llama-2-7B shape, iLoRA K=4 | micro-batch | step s | samples/s | peak GB |", "|---|---|---|---|---|"]
    for r in results["llama2_7b_shape"]:
        ck = "checkpointing" if r["checkpointing"] else "no checkpointing"
        if "error" in r:
            lines.append(f"| {ck} | {r['micro_batch']} | {r['error']} | | |")
        else:
            lines.append(f"| {ck} | {r['micro_batch']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} | "
                         f"{r.get('peak_mem_gb', float('nan')):.1f} |")
    lines.append(f"\nMachine: {results['machine']}; total {results['bench_s']:.0f} s.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
