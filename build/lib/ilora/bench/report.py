"""bench.json and its markdown table: each key, its value, its target and whether it holds."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# key -> (comparison, target, what it measures)
TARGETS: dict[str, tuple[str, float, str]] = {
    "layer_ratio": ("<=", 1.05, "MoE-LoRA layer (K=4) fwd+bwd / peft LoRA layer, B=4 T=340 576->1536 r=8"),
    "step_ratio_vs_peft": ("<=", 1.05, "training step, iLoRA K=4 on all 7 projections / peft LoRA r=8"),
    "step_ratio_k1_vs_peft": ("<=", 1.05, "training step, our K=1 / peft LoRA r=8"),
    "flop_utilisation": (">=", 0.6, "4 x frozen backbone params x tokens/s / matmul peak measured in the same loop"),
    "rank_cost_vs_prefill": ("<=", 1.25, "ranking (prompt + 20 candidates) / prompt prefill alone"),
    "rank_step_vs_tokens": ("<=", 1.25, "rank-loss step / answer-loss step (same users), over their token ratio"),
    "peak_rss_gb": ("<=", 8.0, "peak resident memory of a short ilora-train run (GB; issue 22: fastest within 8)"),
    "ckpt_ratio": ("<=", 0.05, "model checkpoint (best-*.ckpt: adapters, projector, gate) / backbone size"),
}
INFO = (
    "train_examples_per_s", "train_padding_share", "train_tokens_per_example", "train_examples_per_s_study",
    "train_padding_share_study", "train_tokens_per_example_study", "eval_users_per_s", "eval_padding_share",
    "gen_newline_users_per_s", "gen_fixed_users_per_s", "gen_speedup_vs_fixed64", "rank_hr@1",
    "gen_newline_hr@1_valid", "gen_newline_hr@1_all", "gen_fixed_hr@1_valid", "gen_fixed_hr@1_all",
    "flop_utilisation_matmul", "step_s_ilora", "step_s_ilora_k1", "step_s_peft", "train_tokens_per_s", "achieved_flops", "peak_flops",
    "frozen_params", "matmul_params",
    "prefill_s", "rank_s", "eval_users", "ckpt_bytes", "resume_ckpt_ratio", "resume_ckpt_bytes", "backbone_bytes",
    "train_run_s", "rank_step_ratio", "rank_token_ratio", "rank_step_s", "answer_step_s",
    "train_setup", "train_setup_study", "train_compile_s", "train_compile_s_study", "train_examples_per_s_with_compile",
    "train_examples_per_s_with_compile_study", "train_examples_per_s_baseline", "train_examples_per_s_study_baseline",
    "train_setup_baseline", "train_setup_study_baseline", "train_speedup", "train_speedup_study",
    "graphs", "graph_breaks",
)


def holds(key: str, value: float) -> bool:
    op, target, _ = TARGETS[key]
    return value <= target if op == "<=" else value >= target


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def markdown(results: Mapping[str, Any]) -> str:
    lines = ["| key | value | target | holds | what |", "|---|---|---|---|---|"]
    for key, (op, target, what) in TARGETS.items():
        if key in results:
            ok = "yes" if holds(key, results[key]) else "**no**"
            lines.append(f"| `{key}` | {_fmt(results[key])} | {op} {target:g} | {ok} | {what} |")
    lines += ["", "| measurement | value |", "|---|---|"]
    lines += [f"| `{k}` | {_fmt(results[k])} |" for k in INFO if k in results]
    m = results.get("machine", {})
    bf16 = {True: ", avx512_bf16", False: ", no avx512_bf16"}.get(m.get("avx512_bf16"), "")
    lines += ["", f"Machine: {m.get('cpu')}{bf16} ({m.get('threads')} threads), torch {m.get('torch')}, "
              f"precision {results.get('precision')}, load average at start {m.get('loadavg')}, "
              f"at end {results.get('loadavg_end')}."]
    return "\n".join(lines) + "\n"


def write(out_dir: str | Path, results: Mapping[str, Any]) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path


def micro_batch_markdown(rows: list[Mapping[str, Any]]) -> str:
    """The micro-batch table: one row per (recipe, micro-batch, eager/compiled)."""
    lines = ["| recipe | micro-batch x accumulation | step | examples/s | first optimiser step s (compile included) | "
             "later recompile s | peak RSS GB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        acc = max(8 // int(r["micro_batch"]), 1)
        mode = "compiled" if r["compiled"] else "eager"
        if "error" in r:
            lines.append(f"| {r['recipe']} | {r['micro_batch']} x {acc} | {mode} | failed: {r['error']} | | | |")
            continue
        lines.append(f"| {r['recipe']} | {r['micro_batch']} x {acc} | {mode} | {r['examples_per_s']:.2f} | "
                     f"{r['warmup_s']:.1f} | {r['compile_s']:.0f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines) + "\n"
