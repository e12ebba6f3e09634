"""The study's analysis of per-run records (`experiments/study/runs/*.json`): summaries, paired differences,
tables and plots, with the same per-example values and intervals as `ilora-report` (`statistics`).

A record holds one run's test examples (`index`, `user`) and the 1-based rank of each target among the 20
candidates (`target_rank`), plus `dataset`, `protocol`, `method`, `seed`. SASRec's record has the same form.
"""

from __future__ import annotations

import statistics as stats_lib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ilora.report.statistics import (
    ALPHA,
    ESTIMANDS,
    INTERVALS,
    REPORTED,
    SeedMatrix,
    aligned,
    intervals,
    metric_values,
    paired,
    seed_matrix,
)

METRICS = ("rank_hr@1", "rank_hr@5", "rank_ndcg@5")
PAIRED_METRICS = ("rank_hr@1", "rank_hr@5", "rank_ndcg@5")


def matrix(records: Sequence[dict], metric: str) -> SeedMatrix | None:
    """The records' (one method's seeds) per-example values of `metric` on the examples all of them scored."""
    return seed_matrix({int(r["seed"]): (np.asarray(r["index"]), np.asarray(r["user"]),
                                         metric_values(np.asarray(r["target_rank"]), metric)) for r in records})


def _select(records: Sequence[dict], data: str, protocol: str, method: str) -> list[dict]:
    return sorted((r for r in records if (r["dataset"], r["protocol"], r["method"]) == (data, protocol, method)),
                  key=lambda r: r["seed"])


def summarise(records: Sequence[dict], sasrec: dict[str, dict], panels: Sequence[tuple[str, str]],
              methods: Sequence[str], pairs: Sequence[tuple[str, str]]) -> dict:
    """{"summary": one row per (dataset, protocol, method), "paired": one entry per pair of methods}."""
    summary, paired_rows = [], []
    for data, protocol in panels:
        by_method = {m: _select(records, data, protocol, m) for m in methods}
        by_method = {m: v for m, v in by_method.items() if v}
        key = f"{data}/{protocol}"
        if key in sasrec and by_method:  # on exactly the examples the LLM runs scored
            scored = set(next(iter(by_method.values()))[0]["index"])
            rows = [i for i, index in enumerate(sasrec[key]["index"]) if index in scored]
            by_method["sasrec"] = [{**{k: [sasrec[key][k][i] for i in rows] for k in ("index", "user", "target_rank")},
                                    "dataset": data, "protocol": protocol, "method": "sasrec", "seed": 0}]
        for method, members in by_method.items():
            matrices = {metric: matrix(members, metric) for metric in METRICS}
            first = matrices[METRICS[0]]
            row = {"dataset": data, "protocol": protocol, "method": method, "seeds": first.seeds,
                   "n_test": int(first.index.size), "n_users": int(np.unique(first.users).size)}
            if method == "sasrec":  # the encoder that steered the LLM runs, or only one trained like it?
                steering = {r.get("encoder_sha256") for m, rs in by_method.items() if m != "sasrec" for r in rs}
                row["encoder_of_the_runs"] = (None if None in steering
                                              else steering == {sasrec[key].get("encoder_sha256")})
            for metric, found in matrices.items():
                per_seed = found.values.mean(1)
                row[metric] = float(found.values.mean())
                row[f"{metric}_per_seed"] = [float(v) for v in per_seed]
                row[f"{metric}_seed_std"] = stats_lib.stdev(per_seed) if per_seed.size > 1 else None
                row[f"{metric}_intervals"] = intervals(found.values, found.users)
            summary.append(row)
        for a, b in pairs:
            if a not in by_method or b not in by_method:
                continue
            entry = {"dataset": data, "protocol": protocol, "difference": f"{a} - {b}",
                     "seeds": [[r["seed"] for r in by_method[m]] for m in (a, b)]}
            for metric in PAIRED_METRICS:
                found = paired(matrix(by_method[a], metric), matrix(by_method[b], metric))
                if found is None:
                    continue
                entry.update(n_test=found.num_examples, n_users=found.num_users, paired_seeds=found.seeds)
                entry[metric] = {"mean": found.mean, "per_seed": found.per_seed, "intervals": found.intervals}
                if found.mean_squares:  # the variance components the power calculation projects from
                    entry[metric]["mean_squares"] = found.mean_squares
            paired_rows.append(entry)
    return {"summary": summary, "paired": paired_rows}


def coverage(records: Sequence[dict], panels: Sequence[tuple[str, str]], pair: tuple[str, str],
             seeds: Sequence[int] = (1, 3, 10), replicates: int = 2000) -> list[dict]:
    """Per panel with at least two seeds of both methods: the simulation model fitted to the pair's HR@1 hits and
    every interval's measured coverage of its estimand at `seeds` seeds (`ilora.report.simulation`)."""
    from ilora.report import simulation

    out = []
    for data, protocol in panels:
        a, b = (matrix(_select(records, data, protocol, m), "rank_hr@1") for m in pair)
        if a is None or b is None or min(len(a.seeds), len(b.seeds)) < 2:
            continue
        common, users = aligned(a, b)
        model = simulation.fit(a.take(common), b.take(common), users)
        out.append({"dataset": data, "protocol": protocol, "difference": f"{pair[0]} - {pair[1]}",
                    "fitted_to_seeds": [a.seeds, b.seeds], "model": model.as_dict(), "replicates": replicates,
                    "coverage": {str(s): simulation.coverage(model, s, replicates=replicates) for s in seeds}})
    return out


def _half_widths(ms: dict, seeds: int) -> tuple[float, float]:
    """Projected 95% half-widths (new seeds and users: `two_way`; new seeds on these users: `seed_t`) of a paired
    difference at `seeds` seeds, from the variance components estimated at the recorded seed count."""
    from scipy import stats

    s0, g = ms["num_seeds"], ms["num_users"]
    resid = ms["residual"]
    seed_var = max((ms["seeds"] - resid) / g, 0.0)  # between-seed variance of a run's mean, beyond its own noise
    user_var = max((ms["users"] - resid) / s0, 0.0)  # of a user's expected difference
    m_seed = g * seed_var + resid  # expected MS_seeds, whatever the seed count
    t_seed, t_user = stats.t.ppf(1 - ALPHA / 2, seeds - 1), stats.t.ppf(1 - ALPHA / 2, g - 1)
    two_way = np.sqrt((t_seed ** 2 * m_seed + t_user ** 2 * seeds * user_var) / (seeds * g))
    seed_t = t_seed * np.sqrt(m_seed / (seeds * g))
    return float(two_way), float(seed_t)


def power(paired_rows: Sequence[dict], target: float = 0.03, metric: str = "rank_hr@1",
          max_seeds: int = 200) -> list[dict]:
    """Per paired difference with variance components: the seeds needed for a 95% half-width <= `target`, for
    new seeds and users (None when the users alone keep it wider) and for new seeds on these users."""
    out = []
    for p in paired_rows:
        ms = p.get(metric, {}).get("mean_squares")
        if not ms:
            continue
        grid = {s: _half_widths(ms, s) for s in range(2, max_seeds + 1)}
        need = [next((s for s, w in grid.items() if w[i] <= target), None) for i in (0, 1)]
        users_only = max((ms["users"] - ms["residual"]) / ms["num_seeds"], 0.0) / ms["num_users"]  # var at S = inf
        out.append({"dataset": p["dataset"], "protocol": p["protocol"], "difference": p["difference"],
                    "metric": metric, "target": target, "from_seeds": ms["num_seeds"],
                    "seeds_needed": {"two_way": need[0], "seed_t": need[1]},
                    "half_width_at": {str(s): {"two_way": grid[s][0], "seed_t": grid[s][1]} for s in (3, 8, 10, 16, 24)},
                    "users_limit_half_width": float(1.96 * np.sqrt(users_only))})
    return out


# ------------------------------------------------------------------------------------------ validation runs


def point_at(curve: Sequence[dict], examples: int) -> dict | None:
    """The validation point after exactly `examples` training examples; None when it was not logged (a run whose
    final validation was lost: its last point is an earlier one and must not stand in for it)."""
    return next((c for c in curve if c["train_examples"] == examples), None)


def validation_summary(found: Sequence[dict], budget: int, grid: Sequence[float]) -> dict:
    """Learning curves (lr 1e-3, to the longest budget) and, at `budget`, the learning-rate check per dataset and
    method with the chosen rate (best final val HR@1, ties by val MRR)."""
    curves = [{k: r[k] for k in ("dataset", "method", "seed", "lr", "train_examples", "curve", "wall_time_s",
                                 "machine", "threads")}
              for r in found if r["lr"] == 1e-3]
    checks, unfinished = {}, {}
    for r in found:
        if r["train_examples"] != budget:
            continue
        key = f"{r['dataset']}/{r['method']}"
        final = point_at(r["curve"], budget)
        if final is None:
            unfinished.setdefault(key, []).append(str(r["lr"]))
            continue
        checks.setdefault(key, {})[str(r["lr"])] = {
            k.removeprefix("val/"): final[k] for k in ("val/rank_hr@1", "val/rank_hr@5", "val/rank_mrr") if k in final}
    lr = []
    for key in sorted(set(checks) | set(unfinished)):
        by_lr = checks.get(key, {})
        complete = all(str(x) in by_lr for x in grid)
        best = max(by_lr, key=lambda x: (by_lr[x]["rank_hr@1"], by_lr[x].get("rank_mrr", 0.0))) if by_lr else None
        lr.append({"run": key, "by_lr": by_lr, "complete": complete, "chosen": float(best) if complete else None,
                   **({"no_final_point": sorted(unfinished[key])} if key in unfinished else {})})
    return {"budget": budget, "grid": list(grid), "curves": curves, "lr_check": lr,
            "cpu_hours": round(sum(r.get("wall_time_s", 0.0) for r in found) / 3600, 2)}


def validation_table(summary: dict) -> str:
    curves = summary["curves"]
    points = sorted({c["train_examples"] for r in curves for c in r["curve"]})
    lines = ["Validation HR@1 / HR@5 (all val users) after N training examples, lr 1e-3, seed 0:", "",
             "| dataset | method | " + " | ".join(f"{n:,}" for n in points) + " | wall |",
             "|---|---|" + "---|" * (len(points) + 1)]
    for r in sorted(curves, key=lambda r: (r["dataset"], r["method"])):
        at = {c["train_examples"]: c for c in r["curve"]}
        cells = [f"{at[n]['val/rank_hr@1']:.3f} / {at[n].get('val/rank_hr@5', float('nan')):.3f}" if n in at else "-"
                 for n in points]
        lines.append(f"| {r['dataset']} | {r['method']} | " + " | ".join(cells) + f" | {r['wall_time_s'] / 60:.0f} min |")
    grid = summary["grid"]
    lines += ["", f"Learning-rate check at {summary['budget']:,} examples (final val HR@1 / MRR, seed 0):", "",
              "| run | " + " | ".join(f"lr {g:g}" for g in grid) + " | chosen |", "|---|" + "---|" * (len(grid) + 1)]
    for row in summary["lr_check"]:
        lost = row.get("no_final_point", [])
        cells = [f"{row['by_lr'][str(g)]['rank_hr@1']:.3f} / {row['by_lr'][str(g)].get('rank_mrr', float('nan')):.3f}"
                 if str(g) in row["by_lr"] else "no point at the budget" if str(g) in lost else "not run yet"
                 for g in grid]
        chosen = f"{row['chosen']:g}" if row["chosen"] is not None else "(incomplete)"
        lines.append(f"| {row['run']} | " + " | ".join(cells) + f" | {chosen} |")
    return "\n".join(lines)


def plot_validation(found: Sequence[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in found})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.6), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        for r in sorted((r for r in found if r["dataset"] == data), key=lambda r: (r["method"], r["lr"])):
            style = "-" if r["lr"] == 1e-3 else ":"
            ax.plot([c["train_examples"] for c in r["curve"]], [c["val/rank_hr@1"] for c in r["curve"]], style,
                    marker=".", color="C0" if r["method"] == "lora_k1" else "C1",
                    alpha=1.0 if r["lr"] == 1e-3 else 0.6, label=f"{r['method']} lr {r['lr']:g}")
        ax.axhline(0.05, ls="--", color="grey", lw=0.8)
        ax.set(title=f"{data}: validation (all val users)", xlabel="training examples seen", ylabel="val HR@1")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ tables


def _ci(interval: dict | None, signed: bool = False) -> str:
    if not interval:
        return "-"
    low, high = interval["ci95"]
    return f"[{low:+.3f}, {high:+.3f}]" if signed else f"[{low:.3f}, {high:.3f}]"


def table(results: dict, sasrec_notes: dict | None = None) -> str:
    """The study's markdown tables: per method, paired differences (each reported interval, named by what it
    answers), and the measured coverage when present."""
    lines = ["| dataset | protocol | method | seeds | n test (users) | HR@1 ± sd over seeds | [these runs, users] | "
             "[new seeds and users] | HR@5 | NDCG@5 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["summary"]:
        std = f" ± {r['rank_hr@1_seed_std']:.3f}" if r["rank_hr@1_seed_std"] is not None else ""
        note = (sasrec_notes or {}).get(r.get("encoder_of_the_runs"), "") if r["method"] == "sasrec" else ""
        found = r["rank_hr@1_intervals"]
        lines.append(f"| {r['dataset']} | {r['protocol']} | {r['method']}{note} | {len(r['seeds'])} | {r['n_test']} "
                     f"({r['n_users']}) | {r['rank_hr@1']:.3f}{std} | {_ci(found.get('users'))} | "
                     f"{_ci(found.get('two_way'))} | {r['rank_hr@5']:.3f} | {r['rank_ndcg@5']:.3f} |")
    lines += ["", "Paired differences on the same examples, paired by seed. 95% intervals, each for its own question: "
              "*these runs* = the trained runs held fixed, users resampled; *new seeds, these users* = t over the "
              "per-seed differences; *new seeds and users* = t with the crossed seeds x users variance. Intervals "
              "are shown only at seed counts where their coverage was measured within 93-97% (below).", "",
              "| dataset | protocol | paired difference | seeds | metric | mean | per seed | [these runs] | "
              "[new seeds, these users] | [new seeds and users] | n test (users) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in results["paired"]:
        for metric in PAIRED_METRICS:
            if metric not in p:
                continue
            m = p[metric]
            per_seed = " / ".join(f"{v:+.3f}" for v in m["per_seed"].values())
            found = m["intervals"]
            lines.append(f"| {p['dataset']} | {p['protocol']} | {p['difference']} | {len(p['paired_seeds'])} | "
                         f"{metric} | {m['mean']:+.3f} | {per_seed or '-'} | {_ci(found.get('users'), True)} | "
                         f"{_ci(found.get('seed_t'), True)} | {_ci(found.get('two_way'), True)} | "
                         f"{p['n_test']} ({p['n_users']}) |")
    if results.get("coverage"):
        lines += ["", coverage_table(results["coverage"])]
    return "\n".join(lines)


def readme_tables(results: dict, pair: str = "ilora_k4 - lora_k1") -> str:
    """The README's summary of a study, one table per dataset and protocol, every number from `results` (a test
    checks that the README holds exactly this text)."""
    out = []
    panels = list(dict.fromkeys((r["dataset"], r["protocol"]) for r in results["summary"]))
    for data, protocol in panels:
        rows = [r for r in results["summary"] if (r["dataset"], r["protocol"]) == (data, protocol)]
        n = rows[0]
        out += [f"| {data}, {protocol} protocol ({n['n_test']} test examples, {n['n_users']} users) | seeds | HR@1 ± sd "
                "over seeds | [these runs] | [new seeds and users] | HR@5 | NDCG@5 | HR@1 per seed |",
                "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            std = f" ± {r['rank_hr@1_seed_std']:.3f}" if r["rank_hr@1_seed_std"] is not None else ""
            found = r["rank_hr@1_intervals"]
            per_seed = " / ".join(f"{v:.3f}" for v in r["rank_hr@1_per_seed"]) if len(r["seeds"]) > 1 else ""
            out.append(f"| {r['method']} | {len(r['seeds'])} | {r['rank_hr@1']:.3f}{std} | {_ci(found.get('users'))} | "
                       f"{_ci(found.get('two_way'))} | {r['rank_hr@5']:.3f} | {r['rank_ndcg@5']:.3f} | {per_seed} |")
        for p in results["paired"]:
            if (p["dataset"], p["protocol"]) != (data, protocol) or "rank_hr@1" not in p:
                continue
            m = p["rank_hr@1"]
            found = m["intervals"]
            per_seed = " / ".join(f"{v:+.3f}" for v in m["per_seed"].values())
            bold = "**" if p["difference"] == pair else ""
            others = [f"{p[k]['mean']:+.3f} {_ci(p[k]['intervals'].get('two_way') or p[k]['intervals'].get('users'), True)}"
                      if k in p else "-" for k in ("rank_hr@5", "rank_ndcg@5")]
            out.append(f"| {bold}paired {p['difference']}{bold} | {len(p['paired_seeds'])} | {m['mean']:+.3f} "
                       f"(new seeds, these users: {_ci(found.get('seed_t'), True)}) | {_ci(found.get('users'), True)} | "
                       f"{_ci(found.get('two_way'), True)} | {others[0]} | {others[1]} | {per_seed} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def coverage_table(found: Sequence[dict]) -> str:
    """One row per (panel, interval): its estimand and its measured coverage (and mean half-width) per seed count."""
    seeds = sorted({int(s) for c in found for s in c["coverage"]})
    lines = ["Measured coverage of each 95% interval of its own estimand, on simulated studies fitted to the recorded "
             "HR@1 hits (`ilora.report.simulation`; Monte-Carlo standard error about 0.005; mean half-width in "
             "brackets). Reported: " + ", ".join(f"`{n}` from {s} seed{'s' if s > 1 else ''}"
                                                 for n, s in REPORTED.items()) + "; the others are dropped.", "",
             "| panel | interval | estimand | " + " | ".join(f"{s} seed{'s' if s > 1 else ''}" for s in seeds) + " |",
             "|---|---|---|" + "---|" * len(seeds)]
    for c in found:
        for name, spec in INTERVALS.items():
            cells = []
            for s in seeds:
                got = c["coverage"].get(str(s), {}).get(name)
                cells.append(f"{got['coverage']:.3f} (±{got['half_width']:.3f})" if got else "-")
            shown = f"**{name}**" if name in REPORTED else name
            lines.append(f"| {c['dataset']}/{c['protocol']} {c['difference']} (fitted to seeds "
                         f"{'/'.join(str(len(x)) for x in c['fitted_to_seeds'])}) | {shown}: {spec.label} | "
                         f"{ESTIMANDS[spec.estimand]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def power_table(found: Sequence[dict]) -> str:
    """One row per paired difference: the seeds per method that bring its 95% half-width to the target, and the
    projected half-widths (`power`), from the variance components of the seeds recorded so far."""
    if not found:
        return ""
    at = sorted(found[0]["half_width_at"], key=int)  # results.json sorts its keys as text
    target = found[0]["target"]
    lines = [f"Seeds per method for a 95% half-width of at most ±{target:g} HR@1 (`ilora.report.records.power`), "
             "projected from the variance components of the recorded seeds (with few seeds the projection is itself "
             "rough: the seed variance rests on seeds - 1 degrees of freedom). `two_way`: new seeds and users; "
             "`seed_t`: new seeds, these users; the users alone set a floor that no seed count removes.", "",
             "| panel | difference | from seeds | seeds needed: two_way / seed_t | two_way half-width at "
             + " / ".join(at) + " seeds | users' floor |",
             "|---|---|---|---|---|---|"]
    for p in found:
        need = p["seeds_needed"]
        lines.append(f"| {p['dataset']}/{p['protocol']} | {p['difference']} | {p['from_seeds']} | "
                     f"{need['two_way'] or 'never'} / {need['seed_t'] or 'never'} | "
                     + " / ".join(f"±{p['half_width_at'][s]['two_way']:.3f}" for s in at)
                     + f" | ±{p['users_limit_half_width']:.3f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- plots


def plot(results: dict, records: Sequence[dict], results_dir: Path, panels: Sequence[tuple[str, str]],
         methods: Sequence[str]) -> None:
    """hr1.png (per method, widest reported interval), paired_hr1.png, learning_curves.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def widest(found: dict) -> tuple[str, list[float]]:
        name = next(n for n in ("two_way", "seed_t", "users") if n in found)
        return name, found[name]["ci95"]

    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (data, protocol) in zip(axes[0], panels):
        rows = [r for r in results["summary"] if (r["dataset"], r["protocol"]) == (data, protocol)]
        for i, r in enumerate(rows):
            _, (low, high) = widest(r["rank_hr@1_intervals"])
            ax.errorbar([i], [r["rank_hr@1"]], yerr=[[r["rank_hr@1"] - low], [high - r["rank_hr@1"]]], fmt="o",
                        capsize=3)
        ax.axhline(0.05, ls=":", color="grey", label="chance (1/20)")
        ax.set_xticks(range(len(rows)), [r["method"] for r in rows], rotation=30, fontsize=8)
        ax.set(title=f"{data} ({protocol})", ylabel="test HR@1 (widest reported 95% CI)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(results_dir / "hr1.png", dpi=120)
    plt.close(fig)

    pairs = [p for p in results["paired"] if "rank_hr@1" in p]
    fig, ax = plt.subplots(figsize=(7, 1 + 0.4 * max(len(pairs), 1)))
    for y, p in enumerate(pairs):
        m = p["rank_hr@1"]
        name, (low, high) = widest(m["intervals"])
        ax.errorbar([m["mean"]], [y], xerr=[[m["mean"] - low], [high - m["mean"]]], fmt="o", capsize=3)
        ax.annotate(name, (high, y), xytext=(4, 0), textcoords="offset points", fontsize=6, va="center")
    ax.axvline(0, color="grey", lw=1)
    ax.set_yticks(range(len(pairs)), [f"{p['dataset']}/{p['protocol']}: {p['difference']}" for p in pairs],
                  fontsize=7)
    ax.set(xlabel="paired HR@1 difference (widest reported 95% CI, named)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(results_dir / "paired_hr1.png", dpi=120)
    plt.close(fig)

    trained = [r for r in records if r.get("curve") and r["protocol"] == "llara"]  # one curve per training run
    data_names = sorted({r["dataset"] for r in trained}) or ["(none)"]
    fig, axes = plt.subplots(1, len(data_names), figsize=(5 * len(data_names), 3.6), squeeze=False)
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    for ax, data in zip(axes[0], data_names):
        for r in (r for r in trained if r["dataset"] == data):  # each seed, faint
            ax.plot([c["train_examples"] for c in r["curve"]], [c["val/rank_hr@1"] for c in r["curve"]],
                    color=colours.get(r["method"], "k"), alpha=0.25, lw=0.8)
        for c in (c for c in results.get("curves", []) if c["dataset"] == data):  # the mean, ± sd over seeds
            points = [p for p in c["points"] if "val/rank_hr@1" in p]
            x = np.asarray([p["train_examples"] for p in points])
            mean = np.asarray([p["val/rank_hr@1"]["mean"] for p in points])
            sd = np.asarray([p["val/rank_hr@1"]["sd"] or 0.0 for p in points])
            colour = colours.get(c["method"], "k")
            ax.plot(x, mean, marker=".", color=colour, label=f"{c['method']} ({len(c['seeds'])} seeds)")
            ax.fill_between(x, mean - sd, mean + sd, color=colour, alpha=0.15, lw=0)
        ax.set(title=f"{data}: validation (mean ± sd over seeds)", xlabel="training examples seen",
               ylabel="val HR@1")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
        else:  # only untrained runs recorded so far (the frozen LLM)
            ax.text(0.5, 0.5, "no learning curve recorded yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(results_dir / "learning_curves.png", dpi=120)
    plt.close(fig)
