"""The report's figures: the main metric against the number of experts, paired differences, learning curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ilora.report.grouping import ConfigKey, describe
from ilora.report.runs import DEFAULT_METRIC, Run, read_curve

if TYPE_CHECKING:
    from ilora.report.summary import GroupSummary, PairedDifference


def plot_vs_experts(summaries: Sequence[GroupSummary], path: str | Path, metric: str = DEFAULT_METRIC) -> Path:
    """`metric` vs K, one panel per dataset, one line per backbone/gate/rank (LoRA = K 1 joins them),
    CI as error bars; the frozen LLM is a dashed horizontal line."""
    plt = _pyplot()

    datasets = sorted({s.key.data for s in summaries}) or ["(no runs)"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        mine = [s for s in summaries if s.key.data == data and not math.isnan(_point(s, metric))]
        lines: dict[tuple, list[GroupSummary]] = {}
        for s in mine:
            if s.key.num_experts > 1:
                lines.setdefault((s.key.backbone, s.key.gate, s.key.rank, s.key.other), []).append(s)
        for s in mine:  # LoRA joins every iLoRA line of its backbone/rank, or draws its own
            if s.key.num_experts == 1:
                joined = [v for (b, _, r, o), v in lines.items() if (b, r, o) == (s.key.backbone, s.key.rank, s.key.other)]
                for members in joined or [lines.setdefault((s.key.backbone, "", s.key.rank, s.key.other), [])]:
                    members.append(s)
        for i, ((backbone, gate, rank, other), members) in enumerate(sorted(lines.items())):
            members.sort(key=lambda s: s.key.num_experts)
            x = [s.key.num_experts for s in members]
            y = [_point(s, metric) for s in members]
            err = np.asarray([[max(p - s.ci[0], 0.0), max(s.ci[1] - p, 0.0)] if s.ci else [0.0, 0.0]
                              for s, p in zip(members, y)]).T  # [2, points]
            label = " ".join(str(p) for p in (backbone, gate or "LoRA", f"r{rank}", *(f"{n}={v}" for n, v in other)))
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, color=f"C{i}", label=label)
        frozen = [s for s in mine if s.key.adapter == "none"]
        for i, s in enumerate(frozen, start=len(lines)):
            ax.axhline(_point(s, metric), ls="--", color=f"C{i}", label=f"{s.key.backbone} frozen LLM")
        ks = sorted({s.key.num_experts for s in mine if s.key.num_experts > 0})
        if ks:
            ax.set_xticks(ks)
        ax.set(title=data, xlabel="number of experts K (LoRA = 1)", ylabel=metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _save(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)
    return path


def plot_paired(diffs: Sequence[PairedDifference], path: str | Path) -> Path:
    """One panel per metric: each configuration's mean difference to its dataset's baseline, with its interval."""
    plt = _pyplot()

    metrics = sorted({d.metric for d in diffs}) or ["(no pairs)"]
    rows = sorted({(d.key.data, describe(d.key)) for d in diffs})
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 1.2 + 0.45 * max(len(rows), 1)),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for y, (data, label) in enumerate(rows):
            d = next((d for d in diffs if d.metric == metric and (d.key.data, describe(d.key)) == (data, label)), None)
            if d is not None:
                name, (low, high) = d.widest
                ax.errorbar([d.mean], [y], xerr=[[d.mean - low], [high - d.mean]], fmt="o", capsize=3, color="C0")
                ax.annotate(name, (high, y), xytext=(4, 0), textcoords="offset points", fontsize=6, va="center")
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_yticks(range(len(rows)), [f"{data}: {label}" for data, label in rows], fontsize=7)
        baseline = describe(diffs[0].baseline) if diffs else "baseline"
        ax.set(title=f"{metric} minus {baseline}", xlabel="mean paired difference (widest reported 95% interval, named)")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_curves(groups: dict[ConfigKey, list[Run]], path: str | Path, metric: str = "val/rank_hr@1") -> Path | None:
    """`metric` on the fixed validation subset against training examples seen: one panel per dataset, one line per
    run (colour = configuration). None when no run has a curve."""
    curves = {(k, r.seed): read_curve(r) for k, runs in groups.items() for r in runs}
    curves = {key: [row for row in rows if metric in row] for key, rows in curves.items()}
    curves = {key: rows for key, rows in curves.items() if rows}
    if not curves:
        return None
    plt = _pyplot()

    datasets = sorted({k.data for k, _ in curves})
    colours = {k: f"C{i}" for i, k in enumerate(sorted({k for k, _ in curves}))}
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, data in zip(axes[0], datasets):
        for (key, seed), rows in sorted(curves.items(), key=lambda item: (item[0][0], str(item[0][1]))):
            if key.data != data:
                continue
            ax.plot([r["train_examples"] for r in rows], [r[metric] for r in rows], marker=".", color=colours[key],
                    label=f"{describe(key)} s{seed}")
        ax.set(title=data, xlabel="training examples seen", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _point(s: GroupSummary, metric: str) -> float:
    return s.means.get(metric, math.nan)


