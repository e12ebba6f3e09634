"""What training did, across a study's seeds: the validation curves, what iLoRA's gate learned, the CPU it cost.

Reads the same per-run records as `records` (each with `curve`: validation points during training, and `gate`: the
test users' gate summary, `experiments/study/run.py:gate_summary`). Experts are not the same object in two seeds
(expert 1 of one run has no relation to expert 1 of another), so per-expert numbers are sorted within each run,
largest first, before they are averaged over seeds.
"""

from __future__ import annotations

import statistics as stats_lib
from collections.abc import Sequence

import numpy as np

CURVE_METRICS = ("val/rank_hr@1", "val/rank_hr@5", "val/gate_entropy")


def _sd(values: Sequence[float]) -> float | None:
    return stats_lib.stdev(values) if len(values) > 1 else None


def curves(records: Sequence[dict]) -> list[dict]:
    """Per (dataset, method): each validation point that every seed reached, with the mean and sd over seeds of
    each metric. (`run.py` records one point per training-example count; should a record repeat one, the later
    counts.)"""
    groups: dict[tuple[str, str], dict[int, dict[int, dict]]] = {}
    for r in records:
        if r.get("curve"):
            points = {int(c["train_examples"]): c for c in r["curve"]}
            groups.setdefault((r["dataset"], r["method"]), {})[int(r["seed"])] = points
    out = []
    for (data, method), by_seed in sorted(groups.items()):
        shared = sorted(set.intersection(*(set(p) for p in by_seed.values())))
        rows = []
        for n in shared:
            row = {"train_examples": n, "num_examples": by_seed[min(by_seed)][n].get("val/num_examples")}
            for metric in CURVE_METRICS:
                values = [by_seed[s][n][metric] for s in sorted(by_seed) if metric in by_seed[s][n]]
                if len(values) == len(by_seed):
                    row[metric] = {"mean": float(np.mean(values)), "sd": _sd(values)}
            rows.append(row)
        out.append({"dataset": data, "method": method, "seeds": sorted(by_seed), "points": rows})
    return out


def gate_use(records: Sequence[dict]) -> list[dict]:
    """Per (dataset, protocol, method) with a gate: the test users' gate entropy (nats; uniform = log K) and, with
    experts sorted within each run, the mean weight per expert, its spread across users, and the share of users
    whose top expert each one is; means over seeds (entropy also its sd)."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        if r.get("gate"):
            groups.setdefault((r["dataset"], r["protocol"], r["method"]), []).append(r)
    out = []
    for (data, protocol, method), runs in sorted(groups.items()):
        gates = [r["gate"] for r in sorted(runs, key=lambda r: r["seed"])]
        entropy = [g["entropy_mean"] for g in gates]
        order = [np.argsort(g["weight_mean"])[::-1] for g in gates]
        out.append({
            "dataset": data, "protocol": protocol, "method": method, "seeds": sorted(r["seed"] for r in runs),
            "entropy_mean": float(np.mean(entropy)), "entropy_sd": _sd(entropy),
            "entropy_min": float(min(g["entropy_min"] for g in gates)), "entropy_uniform": gates[0]["entropy_uniform"],
            "weight_sorted": np.mean([np.asarray(g["weight_mean"])[o] for g, o in zip(gates, order)], 0).tolist(),
            "weight_std_across_users": np.mean([np.asarray(g["weight_std_across_users"])[o]
                                                for g, o in zip(gates, order)], 0).tolist(),
            "top_share_sorted": np.mean([np.sort(g["top_expert_share"])[::-1] for g in gates], 0).tolist(),
        })
    return out


def cpu_hours(records: Sequence[dict], first_protocol: dict[str, str]) -> dict:
    """Wall hours of the runs (training and their first protocol's test), in all and per (dataset, method)."""
    counted = [r for r in records if r["protocol"] == first_protocol[r["dataset"]]]
    per = {}
    for r in counted:
        key = f"{r['dataset']}/{r['method']}"
        per[key] = per.get(key, 0.0) + r.get("wall_time_s", 0.0) / 3600
    machines = sorted({f"{r['machine']['cpu']}, {r['machine']['cores']} cores, {r['machine']['precision']}"
                       for r in counted if r.get("machine")})
    return {"total": round(sum(per.values()), 2), "per_method": {k: round(v, 2) for k, v in sorted(per.items())},
            "machines": machines}


def precision_by_seed(records: Sequence[dict]) -> dict[str, dict[str, list[int]]]:
    """{dataset: {precision: seeds}} of the trained runs: which seeds ran in bf16 autocast and which in fp32 (each
    seed's methods share one, so that paired differences never mix them; the study runner keeps to that)."""
    out: dict[str, dict[str, set[int]]] = {}
    for r in records:
        if r["method"] in ("frozen", "sasrec") or not r.get("machine"):
            continue
        out.setdefault(r["dataset"], {}).setdefault(r["machine"]["precision"], set()).add(r["seed"])
    return {d: {p: sorted(seeds) for p, seeds in sorted(by.items())} for d, by in sorted(out.items())}


def paired_by_precision(paired: Sequence[dict], precision: dict[str, dict[str, list[int]]],
                        metric: str = "rank_hr@1") -> list[dict]:
    """The per-seed paired differences split by the precision their seed ran in, for the pairs whose seeds ran in
    both: whether bf16 and fp32 seeds disagree beyond seed noise is read here, not assumed away."""
    out = []
    for entry in paired:
        per_seed = (entry.get(metric) or {}).get("per_seed") or {}
        of_seed = {s: p for p, seeds in precision.get(entry["dataset"], {}).items() for s in seeds}
        groups: dict[str, list[float]] = {}
        for seed, value in per_seed.items():
            groups.setdefault(of_seed.get(int(seed), "unrecorded"), []).append(value)
        if len(groups) < 2:
            continue
        out.append({"dataset": entry["dataset"], "protocol": entry["protocol"], "difference": entry["difference"],
                    "metric": metric, "by_precision": {p: {"seeds": len(v), "mean": float(np.mean(v)), "sd": _sd(v)}
                                                       for p, v in sorted(groups.items())}})
    return out


def _curve_cell(point: dict | None) -> str:
    if not point or "val/rank_hr@1" not in point:
        return "-"
    hr1, hr5 = point["val/rank_hr@1"], point.get("val/rank_hr@5")
    sd = f" ± {hr1['sd']:.3f}" if hr1["sd"] is not None else ""
    return f"{hr1['mean']:.3f}{sd}" + (f" ({hr5['mean']:.3f})" if hr5 else "")


def details_table(results: dict) -> str:
    """Markdown: the mean validation curves, the gate, the CPU hours (every number from `results`)."""
    lines = []
    found = results.get("curves") or []
    if found:
        points = sorted({p["train_examples"] for c in found for p in c["points"]})
        with_hr5 = any("val/rank_hr@5" in p for c in found for p in c["points"])
        lines += ["Validation HR@1 during training, mean ± sd over seeds" + (" (HR@5 in brackets):" if with_hr5 else ":"),
                  "",
                  "| dataset | method | seeds | " + " | ".join(f"{n:,}" for n in points) + " |",
                  "|---|---|---|" + "---|" * len(points)]
        for c in found:
            at = {p["train_examples"]: p for p in c["points"]}
            lines.append(f"| {c['dataset']} | {c['method']} | {len(c['seeds'])} | "
                         + " | ".join(_curve_cell(at.get(n)) for n in points) + " |")
        entropy = [c for c in found if any("val/gate_entropy" in p for p in c["points"])]
        if entropy:
            lines += ["", "Gate entropy on the val users during training (nats; uniform = log K), mean over seeds:",
                      "", "| dataset | method | " + " | ".join(f"{n:,}" for n in points) + " |",
                      "|---|---|" + "---|" * len(points)]
            for c in entropy:
                at = {p["train_examples"]: p.get("val/gate_entropy") for p in c["points"]}
                lines.append(f"| {c['dataset']} | {c['method']} | " + " | ".join(
                    f"{at[n]['mean']:.3f}" if at.get(n) else "-" for n in points) + " |")
    gates = results.get("gate") or []
    if gates:
        lines += ["", "What the gate did on the test users (experts sorted within each run, largest mean weight "
                      "first, then averaged over seeds):", "",
                  "| dataset | method | seeds | entropy ± sd over seeds (uniform) | lowest user's entropy | "
                  "mean weight per expert | its sd across users | share of users whose top expert it is |",
                  "|---|---|---|---|---|---|---|---|"]
        for g in gates:
            sd = f" ± {g['entropy_sd']:.3f}" if g["entropy_sd"] is not None else ""
            lines.append(f"| {g['dataset']} | {g['method']} | {len(g['seeds'])} | {g['entropy_mean']:.3f}{sd} "
                         f"({g['entropy_uniform']:.3f}) | {g['entropy_min']:.3f} | "
                         + " / ".join(f"{w:.3f}" for w in g["weight_sorted"]) + " | "
                         + " / ".join(f"{w:.3f}" for w in g["weight_std_across_users"]) + " | "
                         + " / ".join(f"{w:.2f}" for w in g["top_share_sorted"]) + " |")
    hours = results.get("cpu_hours")
    if isinstance(hours, dict):
        per = ", ".join(f"{k} {v:.1f}" for k, v in hours["per_method"].items())
        lines += ["", f"CPU cost: {hours['total']:.1f} hours of wall time for training and test ({per}), on "
                      f"{'; '.join(hours['machines']) or 'unrecorded machines'}; each run's own machine and load "
                      "(two one-thread lanes share 2 cores) are in `runs/*.json`."]
    split = results.get("paired_by_precision") or []
    if split:
        columns = sorted({p for e in split for p in e["by_precision"]})  # bf16, fp32 (and "unrecorded" if any)
        lines += ["", "Paired HR@1 differences by the precision of their seeds (mean ± sd over seeds):", "",
                  "| dataset | protocol | difference | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
        for e in split:
            cells = []
            for p in columns:
                g = e["by_precision"].get(p)
                sd = f" ± {g['sd']:.3f}" if g and g["sd"] is not None else ""
                cells.append(f"{g['mean']:+.3f}{sd} ({g['seeds']} seed{'s' if g['seeds'] > 1 else ''})" if g else "-")
            lines.append(f"| {e['dataset']} | {e['protocol']} | {e['difference']} | " + " | ".join(cells) + " |")
    precision = results.get("precision_by_seed")
    if precision:
        lines += ["", "Precision of each seed's runs (all methods of a seed share it): " + "; ".join(
            f"{d}: " + ", ".join(f"{p} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                                 for p, seeds in by.items()) for d, by in precision.items()) + "."]
    return "\n".join(lines).strip() + "\n" if lines else ""
