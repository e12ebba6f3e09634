"""Per-configuration summaries and paired differences against a baseline, with the intervals of `statistics`.

The table's interval of the main metric resamples *test users* with each user's value averaged over the seeds
(estimand `runs`: these trained runs on new users); with enough seeds the intervals that also count training noise
(`seed_t`: new seeds on these users, `two_way`: new seeds and new users) are added beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ilora.report.grouping import ConfigKey, matches
from ilora.report.runs import DEFAULT_METRIC, Run
from ilora.report.statistics import intervals, paired, runs_matrix

PAIRED_METRICS = ("test/rank_hr@1", "test/rank_ndcg@5")
DEFAULT_BASELINE = "adapter.num_experts=1"  # LoRA of the same rank
# (column header, metrics.json key, decimals) of the table, in order.
COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("HR@1", "test/rank_hr@1", 4),
    ("HR@5", "test/rank_hr@5", 4),
    ("NDCG@5", "test/rank_ndcg@5", 4),
    ("ValidRatio", "test/gen_valid_ratio", 4),
    ("gen HR@1 (valid)", "test/gen_hr@1_valid", 4),
    ("gen HR@1 (all)", "test/gen_hr@1_all", 4),
    ("wall time (s)", "wall_time_s", 0),
)
WIDEST_FIRST = ("two_way", "seed_t", "users")  # population, then this test set, then these runs


@dataclass
class GroupSummary:
    key: ConfigKey
    runs: list[Run]
    means: dict[str, float]  # metric -> mean over completed seeds (NaN when absent)
    stds: dict[str, float]  # sample std (ddof=1); NaN below two seeds
    ci: tuple[float, float] | None  # the `users` interval of the main metric; None when not computable
    num_users: int
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)  # every reported interval of the main metric

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]


@dataclass
class PairedDifference:
    """Mean of (config - baseline) on the examples both scored, paired by seed where they share seeds."""

    key: ConfigKey
    baseline: ConfigKey
    metric: str
    mean: float
    ci: tuple[float, float]  # the `users` interval
    num_examples: int
    num_users: int
    seeds: list[int] = field(default_factory=list)
    intervals: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def widest(self) -> tuple[str, tuple[float, float]]:
        """(name, interval) of the reported interval with the broadest estimand."""
        name = next(n for n in WIDEST_FIRST if n in self.intervals)
        return name, tuple(self.intervals[name]["ci95"])


def summarize(key: ConfigKey, runs: list[Run], metric: str = DEFAULT_METRIC) -> GroupSummary:
    """Mean and sample std over completed seeds of the table metrics and `metric`, plus its intervals."""
    done = [r for r in runs if r.status == "completed"]
    means, stds = {}, {}
    for name in dict.fromkeys([c[1] for c in COLUMNS] + [metric]):
        vals = np.asarray([r.metrics[name] for r in done if not math.isnan(r.metrics.get(name, math.nan))])
        means[name] = float(vals.mean()) if vals.size else math.nan
        stds[name] = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
    matrix = runs_matrix(done, metric)
    if matrix is None:
        return GroupSummary(key=key, runs=runs, means=means, stds=stds, ci=None, num_users=0)
    found = intervals(matrix.values, matrix.users)
    return GroupSummary(key=key, runs=runs, means=means, stds=stds, ci=tuple(found["users"]["ci95"]),
                        num_users=int(np.unique(matrix.users).size), intervals=found)


def paired_difference(runs: Sequence[Run], baseline_runs: Sequence[Run], key: ConfigKey, baseline: ConfigKey,
                      metric: str) -> PairedDifference | None:
    """The configuration minus the baseline on the examples both scored (None when they share none)."""
    a, b = runs_matrix(runs, metric), runs_matrix(baseline_runs, metric)
    if a is None or b is None or (found := paired(a, b)) is None:
        return None
    return PairedDifference(key=key, baseline=baseline, metric=metric, mean=found.mean,
                            ci=tuple(found.intervals["users"]["ci95"]), num_examples=found.num_examples,
                            num_users=found.num_users, seeds=found.seeds, intervals=found.intervals)


def paired_differences(groups: dict[ConfigKey, list[Run]], baseline: str,
                       metrics: Sequence[str] = PAIRED_METRICS) -> list[PairedDifference]:
    """Every configuration against the baseline configuration of its dataset (the one matching `baseline`)."""
    out = []
    for data in sorted({k.data for k in groups}):
        mine = {k: v for k, v in groups.items() if k.data == data}
        bases = [k for k, v in mine.items() if matches(k, v, baseline)]
        if len(bases) != 1:
            continue  # no baseline here (or an ambiguous one): nothing to pair with
        for key, runs in mine.items():
            if key == bases[0]:
                continue
            for metric in metrics:
                if (found := paired_difference(runs, mine[bases[0]], key, bases[0], metric)) is not None:
                    out.append(found)
    return out
