"""Aggregate `ilora-train` run directories into a markdown report, paired differences and plots.

One concern per module, imported in this order: `runs` (reading run directories) -> `grouping` (configurations:
everything but the seed) -> `statistics` (per-example values, seed matrices, the intervals and their estimands) ->
`summary` (per configuration, and against a baseline) -> `tables`, `plots` -> `build_report` here. `simulation`
measures the intervals' coverage on studies fitted to recorded runs; `readme` writes results into the READMEs'
generated blocks. The study (`experiments/study/run.py`) uses
`statistics` for its tables too, so both report the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ilora.errors import DataError
from ilora.report.grouping import ConfigKey, group_runs
from ilora.report.plots import plot_curves, plot_paired, plot_vs_experts
from ilora.report.runs import DEFAULT_METRIC, Run, find_run_dirs, load_run, read_curve, read_predictions
from ilora.report.statistics import example_values, per_example_values
from ilora.report.summary import (
    DEFAULT_BASELINE,
    GroupSummary,
    PairedDifference,
    paired_difference,
    paired_differences,
    summarize,
)
from ilora.report.tables import markdown_table, paired_table

PLOT_NAME = "hr1_vs_experts.png"
REPORT_NAME = "report.md"
PAIRED_NAME = "paired_vs_baseline.png"
CURVES_NAME = "learning_curves.png"

__all__ = ["DEFAULT_BASELINE", "DEFAULT_METRIC", "ConfigKey", "GroupSummary", "PairedDifference", "Report", "Run",
           "build_report", "example_values", "find_run_dirs", "group_runs", "load_run", "markdown_table",
           "paired_difference", "paired_differences", "paired_table", "per_example_values", "read_curve",
           "read_predictions", "summarize"]


@dataclass
class Report:
    table: str
    markdown: str
    summaries: list[GroupSummary]
    problems: list[Run]
    markdown_path: Path
    plot_path: Path
    paired: list[PairedDifference] = field(default_factory=list)
    paired_path: Path | None = None
    curves_path: Path | None = None


def build_report(dirs: Sequence[str | Path], out_dir: str | Path | None = None,
                 metric: str = DEFAULT_METRIC, baseline: str | None = DEFAULT_BASELINE) -> Report:
    """Find, group and summarise the runs under `dirs`; write `report.md` and the plots into `out_dir`
    (default: the first dir). `baseline` (`config.key=value[,...]` or a label such as LoRA) names the
    configuration every other one of its dataset is compared with, example by example; None: no comparison.
    Raises DataError when no run directory is found or `metric` is nowhere."""
    if not dirs:
        raise DataError("no directories given")
    paths = find_run_dirs(dirs)
    if not paths:
        raise DataError(f"no run directories (a folder with config.yaml) under {', '.join(map(str, dirs))}")
    runs = [load_run(p) for p in paths]
    known = set().union(*(r.metrics for r in runs))
    if known and metric not in known:
        raise DataError(f"--metric {metric} is in no metrics.json; known: {', '.join(sorted(known))}")
    groups = group_runs(runs)
    summaries = [summarize(k, members, metric) for k, members in groups.items()]
    paired = paired_differences(groups, baseline) if baseline else []
    problems = [r for r in runs if r.status != "completed"]
    table = markdown_table(summaries, metric)
    out = Path(out_dir if out_dir is not None else dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    lines = [f"# iLoRA runs: {len(runs)} runs, {len(summaries)} configurations", "",
             f"Mean ± std over completed seeds. 95% intervals of `{metric}` (1000 bootstrap samples, seed 0): "
             "*these runs* resamples test users with each user's value averaged over the seeds (the trained runs "
             "held fixed); *new seeds and users* (from 3 seeds) also counts training noise, from the crossed "
             "seeds x users variance with a t quantile. Their coverage was measured on simulated studies "
             "(experiments/study/README.md).", "", table, ""]
    if paired:
        lines += [f"## Paired differences vs the baseline (`{baseline}`)", "",
                  "Per test example: configuration minus baseline, paired by seed where both ran it, on the examples "
                  "both scored. *these runs*: users resampled with all their examples; *new seeds*: t over the "
                  "per-seed differences, the test users fixed; *new seeds and users*: t with the crossed seeds x "
                  "users variance (both from 3 shared seeds).", "", paired_table(paired), ""]
    if problems:
        lines += ["## Failed and unfinished runs", ""]
        lines += [f"- {r.status.upper()} `{r.path}`" + (f": {r.error}" if r.error else "") for r in problems]
        lines.append("")
    text = "\n".join(lines)
    md_path = out / REPORT_NAME
    md_path.write_text(text, encoding="utf-8")
    plot_path = plot_vs_experts(summaries, out / PLOT_NAME, metric)
    paired_path = plot_paired(paired, out / PAIRED_NAME) if paired else None
    curves_path = plot_curves(groups, out / CURVES_NAME)
    return Report(table=table, markdown=text, summaries=summaries, problems=problems, markdown_path=md_path,
                  plot_path=plot_path, paired=paired, paired_path=paired_path, curves_path=curves_path)
