"""Markdown tables of the report: one row per configuration, and the paired differences with their intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence

from ilora.report.grouping import describe
from ilora.report.runs import DEFAULT_METRIC
from ilora.report.summary import COLUMNS, GroupSummary, PairedDifference


def _fmt(mean: float, std: float, decimals: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{decimals}f}" if math.isnan(std) else f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def _problems(summary: GroupSummary) -> str:
    failed = [r for r in summary.runs if r.status == "failed"]
    unfinished = [r for r in summary.runs if r.status == "unfinished"]
    parts = [f"FAILED seed {r.seed}: {r.error}" for r in failed]
    parts += [f"UNFINISHED seed {r.seed}" for r in unfinished]
    seeds = [r.seed for r in summary.completed]
    if dupes := sorted({s for s in seeds if seeds.count(s) > 1}, key=str):
        parts.append(f"duplicate seeds {dupes}")
    return "; ".join(parts)


def markdown_table(summaries: Sequence[GroupSummary], metric: str = DEFAULT_METRIC) -> str:
    """One row per configuration (sorted by data, then K), with the main metric's intervals (`statistics`)."""
    columns = list(COLUMNS)
    if metric not in {c[1] for c in columns}:
        columns.insert(0, (metric, metric, 4))
    show_other = any(s.key.other for s in summaries)
    head = ["data", "backbone", "adapter", "K", "rank", "gate"] + (["other"] if show_other else [])
    head += ["seeds"] + [c[0] for c in columns] + [f"{metric} 95% CI these runs (users)",
                                                 f"{metric} 95% CI new seeds and users (two-way t)", "failed / unfinished"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        k = s.key
        cells = [k.data, k.backbone, k.label, str(k.num_experts), str(k.rank) if k.rank else "-", k.gate or "-"]
        if show_other:
            cells.append(", ".join(f"{n}={v}" for n, v in k.other) or "-")
        cells.append(str(len(s.completed)))
        cells += [_fmt(s.means[c[1]], s.stds[c[1]], c[2]) for c in columns]
        cells.append(f"[{s.ci[0]:.4f}, {s.ci[1]:.4f}] (n={s.num_users})" if s.ci else "-")
        two_way = s.intervals.get("two_way", {}).get("ci95")
        cells.append(f"[{two_way[0]:.4f}, {two_way[1]:.4f}]" if two_way else "-")
        cells.append(_problems(s) or "-")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def _interval_cell(d: PairedDifference, name: str) -> str:
    if name not in d.intervals:
        return "-"
    low, high = d.intervals[name]["ci95"]
    return f"[{low:+.4f}, {high:+.4f}]"


def paired_table(diffs: Sequence[PairedDifference]) -> str:
    head = ["data", "configuration", "baseline", "metric", "paired seeds", "mean difference",
            "95% CI these runs (users)", "95% CI new seeds (t, users fixed)", "95% CI new seeds and users (two-way)",
            "examples", "users"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in diffs:
        cells = [d.key.data, describe(d.key), describe(d.baseline), d.metric, str(len(d.seeds) or "none"),
                 f"{d.mean:+.4f}", *(_interval_cell(d, n) for n in ("users", "seed_t", "two_way")),
                 str(d.num_examples), str(d.num_users)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)
