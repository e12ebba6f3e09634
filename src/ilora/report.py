"""Aggregate `ilora-train` run directories into a markdown table and an HR@1-vs-experts plot.

A run directory is any directory holding `config.yaml` (searched recursively; hidden and `wandb` folders
and the inside of a run directory are skipped). Beside it: `status.json` (completed / failed; absent =
unfinished), `metrics.json` (flat floats) and `predictions_test.jsonl` (one object per test example).

Runs are grouped by configuration = everything but the seed: data, backbone, adapter kind, K (frozen LLM = 0,
LoRA = 1), rank, gate, plus any other config value that differs between the runs of that group (e.g. a swept
learning rate), so different settings are never averaged together. Paths and other per-run values are ignored.

The confidence interval of the main metric is over *test users*, seeds aggregated: each user's per-example
value (matched by `index`) is averaged over the group's seeds that scored it, then users are resampled
(percentile bootstrap, `ilora.metrics.bootstrap_ci`). Seed noise thus shrinks the per-user values instead of
counting as extra users. Per-example ranking hits use the pessimistic tie rule of `ilora.metrics.target_rank`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ilora.errors import DataError

DEFAULT_METRIC = "test/rank_hr@1"
PLOT_NAME = "hr1_vs_experts.png"
REPORT_NAME = "report.md"
PREDICTIONS_NAME = "predictions_test.jsonl"
PAIRED_NAME = "paired_vs_baseline.png"
CURVES_NAME = "learning_curves.png"
CURVE_FILE = "curve.jsonl"
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
_SKIP_DIRS = {"wandb", "checkpoints", "__pycache__"}
_IGNORED_KEYS = {"seed", "tags", "ckpt_path", "task_name", "test_ckpt"}


@dataclass(frozen=True, order=True)
class ConfigKey:
    """What identifies a configuration (the seed excluded). `num_experts` is 0 for the frozen LLM."""

    data: str
    num_experts: int
    backbone: str
    adapter: str
    rank: int
    gate: str  # short class name, "" when no gate acts (frozen LLM, LoRA)
    other: tuple[tuple[str, str], ...] = ()  # other config values that differ inside the group

    @property
    def label(self) -> str:
        if self.adapter == "none":
            return "frozen LLM"
        return "LoRA" if self.num_experts == 1 else "iLoRA"


@dataclass
class Run:
    path: Path
    status: str  # completed | failed | unfinished
    error: str = ""
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    key: ConfigKey | None = None


@dataclass
class GroupSummary:
    key: ConfigKey
    runs: list[Run]
    means: dict[str, float]  # metric -> mean over completed seeds (NaN when absent)
    stds: dict[str, float]  # sample std (ddof=1); NaN below two seeds
    ci: tuple[float, float] | None  # bootstrap CI of the main metric over users, None when not computable
    num_users: int

    @property
    def completed(self) -> list[Run]:
        return [r for r in self.runs if r.status == "completed"]


# ----------------------------------------------------------------------------------------------- loading


def find_run_dirs(dirs: Iterable[str | Path]) -> list[Path]:
    """Every directory under `dirs` (themselves included) that holds `config.yaml`, sorted, deduplicated."""
    found: set[Path] = set()
    for root in dirs:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root} is not a directory")
        stack = [root]
        while stack:
            d = stack.pop()
            if (d / "config.yaml").is_file():
                found.add(d.resolve())
                continue  # a run's own sub-folders (checkpoints, csv, wandb) are not runs
            try:
                children = [c for c in d.iterdir() if c.is_dir()]
            except OSError:
                continue
            stack.extend(c for c in children if not c.name.startswith(".") and c.name not in _SKIP_DIRS)
    return sorted(found)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def _select(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def load_run(path: str | Path) -> Run:
    """Read one run directory; problems (bad files, missing metrics) mark the run failed, never raise."""
    path = Path(path)
    run = Run(path=path, status="unfinished")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        return Run(path=path, status="failed", error=f"config.yaml unreadable: {_first_line(str(e))}")
    if not isinstance(config, dict):
        return Run(path=path, status="failed", error="config.yaml is not a mapping")
    run.config = config
    seed = config.get("seed")
    run.seed = int(seed) if isinstance(seed, int | float) else None
    status_file = path / "status.json"
    if status_file.is_file():
        try:
            status = _read_json(status_file)
        except DataError as e:
            run.status, run.error = "failed", str(e)
            return run
        state = status.get("status") if isinstance(status, dict) else None
        if state == "failed":
            run.status, run.error = "failed", _first_line(str(status.get("error", "")) or "no error message")
        elif state == "completed":
            run.status = "completed"
    if run.status == "completed":
        try:
            metrics = _read_json(path / "metrics.json") if (path / "metrics.json").is_file() else None
        except DataError as e:
            metrics, run.error = None, str(e)
        if not isinstance(metrics, dict):
            run.status, run.error = "failed", run.error or "completed but metrics.json is missing or not an object"
        else:
            run.metrics = {k: _to_float(v) for k, v in metrics.items()}
    return run


def _first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def _to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


# ---------------------------------------------------------------------------------------------- grouping


def _base_key(config: dict[str, Any]) -> ConfigKey:
    adapter = str(_select(config, "adapter.kind", "?"))
    if adapter == "none":
        k, rank, gate = 0, 0, ""
    else:
        k = int(_select(config, "adapter.num_experts", 1) or 1)
        rank = int(_select(config, "adapter.rank", 0) or 0)
        target = _select(config, "gate._target_")
        gate = str(target).rsplit(".", 1)[-1] if target and k > 1 else ""
    return ConfigKey(data=str(_select(config, "data.name", "?")), num_experts=k,
                     backbone=str(_select(config, "backbone.kind", "?")), adapter=adapter, rank=rank, gate=gate)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def _comparable(config: dict[str, Any], key: ConfigKey) -> dict[str, str]:
    """Config leaves that define a setting: no seed, no paths, no per-run directories, no unused groups."""
    flat = _flatten(config)
    paths = [v for k, v in flat.items() if k.startswith("paths.") and isinstance(v, str) and v]
    skip = ("paths.", "adapter." if key.adapter == "none" else "\0", "gate." if not key.gate else "\0")
    out = {}
    for k, v in flat.items():
        if k in _IGNORED_KEYS or k.startswith(skip):
            continue
        if isinstance(v, str) and any(v.startswith(p) for p in paths):
            continue  # a path derived from paths.* (output dir, data dir): differs per run or per machine
        out[k] = json.dumps(v, sort_keys=True, default=str)
    return out


def group_runs(runs: Sequence[Run]) -> dict[ConfigKey, list[Run]]:
    """Group by `ConfigKey`; runs without a readable config are left out (they are listed as failures)."""
    base: dict[ConfigKey, list[Run]] = {}
    for run in runs:
        if run.config:
            base.setdefault(_base_key(run.config), []).append(run)
    groups: dict[ConfigKey, list[Run]] = {}
    for key, members in base.items():
        flats = [_comparable(r.config, key) for r in members]
        names = sorted(set().union(*flats))
        varying = [n for n in names if len({f.get(n) for f in flats}) > 1]
        for run, flat in zip(members, flats):
            other = tuple((n, flat.get(n, "absent")) for n in varying)
            run.key = replace(key, other=other)
            groups.setdefault(run.key, []).append(run)
    return dict(sorted(groups.items()))


# ------------------------------------------------------------------------------------------- per-example


def read_predictions(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a `predictions_test.jsonl` (DataError naming the file and line on a bad row)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path}:{i}: not valid JSON ({e})") from e
            if not isinstance(row, dict) or "index" not in row or "target_index" not in row:
                raise DataError(f"{path}:{i}: a prediction needs 'index' and 'target_index'")
            rows.append(row)
    return rows


def per_example_values(rows: Sequence[dict[str, Any]], metric: str, source: str = "predictions") -> dict[int, float]:
    """`{index: value}` of `metric` for each example, or {} when the rows cannot give it.

    Supported: `rank_hr@k`, `rank_ndcg@k`, `rank_mrr` (need `scores`), `gen_hr@1_all` (choice == target),
    `gen_valid_ratio` (choice != -1). `gen_hr@1_valid` is a ratio over valid rows, not a per-user mean: {}.
    """
    name = metric.rsplit("/", 1)[-1]
    if not rows:
        return {}
    index = [int(r["index"]) for r in rows]
    target = np.asarray([int(r["target_index"]) for r in rows])
    if name.startswith("rank_"):
        if any("scores" not in r for r in rows):
            return {}
        rank = _ranks(rows, target, source).astype(float)  # [N]
        if m := re.fullmatch(r"rank_hr@(\d+)", name):
            values = (rank <= int(m.group(1))).astype(float)
        elif m := re.fullmatch(r"rank_ndcg@(\d+)", name):
            values = np.where(rank <= int(m.group(1)), 1.0 / np.log2(rank + 1.0), 0.0)
        elif name == "rank_mrr":
            values = 1.0 / rank
        else:
            return {}
    elif name in ("gen_hr@1_all", "gen_valid_ratio"):
        if any("choice" not in r for r in rows):
            return {}
        choice = np.asarray([int(r["choice"]) for r in rows])
        values = (choice == target) if name == "gen_hr@1_all" else (choice != -1)
        values = values.astype(float)
    else:
        return {}
    return dict(zip(index, values.tolist()))


def _ranks(rows: Sequence[dict[str, Any]], target: np.ndarray, source: str) -> np.ndarray:
    import torch

    from ilora.metrics import target_rank

    widths = {len(r["scores"]) for r in rows}
    if len(widths) != 1:
        raise DataError(f"{source}: 'scores' lists have different lengths {sorted(widths)}")
    scores = torch.tensor([[_to_float(s) for s in r["scores"]] for r in rows], dtype=torch.float64)
    try:
        return target_rank(scores, torch.as_tensor(target)).numpy()
    except ValueError as e:
        raise DataError(f"{source}: {e}") from e


def example_values(runs: Sequence[Run], metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`(index [N], value [N], user [N])`: each test example's `metric` averaged over the runs (seeds) that scored
    it, and the user it belongs to (a protocol with several windows per user has several examples per user;
    predictions without a `user` count each example as its own user).

    Runs without usable predictions are skipped; no usable run gives three empty arrays.
    """
    sums: dict[int, float] = {}
    counts: dict[int, int] = {}
    users: dict[int, int] = {}
    for run in runs:
        file = run.path / PREDICTIONS_NAME
        if not file.is_file():
            continue
        rows = read_predictions(file)
        for row in rows:
            users[int(row["index"])] = int(row.get("user", row["index"]))
        for i, v in per_example_values(rows, metric, source=str(file)).items():
            sums[i] = sums.get(i, 0.0) + v
            counts[i] = counts.get(i, 0) + 1
    index = np.asarray(sorted(sums), dtype=np.int64)
    return (index, np.asarray([sums[i] / counts[i] for i in index.tolist()], dtype=float),
            np.asarray([users[i] for i in index.tolist()], dtype=np.int64))


def _bootstrap_ci(values: np.ndarray, users: np.ndarray, num_samples: int = 1000, alpha: float = 0.05, seed: int = 0):
    from ilora.metrics import cluster_bootstrap_ci

    return cluster_bootstrap_ci(values, users, num_samples=num_samples, alpha=alpha, seed=seed)


@dataclass
class PairedDifference:
    """Mean of (config - baseline) over the examples both scored, with a paired user-resampling interval."""

    key: ConfigKey
    baseline: ConfigKey
    metric: str
    mean: float
    ci: tuple[float, float]
    num_examples: int
    num_users: int


def paired_difference(runs: Sequence[Run], baseline_runs: Sequence[Run], key: ConfigKey, baseline: ConfigKey,
                      metric: str) -> PairedDifference | None:
    """Per example: the config's value minus the baseline's (each averaged over its seeds), on the examples both
    scored; the interval resamples users with all their examples, so the pairing and the clustering both hold.
    None when the two share no scored example."""
    index_a, value_a, users = example_values([r for r in runs if r.status == "completed"], metric)
    index_b, value_b, _ = example_values([r for r in baseline_runs if r.status == "completed"], metric)
    common, at_a, at_b = np.intersect1d(index_a, index_b, return_indices=True)
    if common.size == 0:
        return None
    diff = value_a[at_a] - value_b[at_b]
    return PairedDifference(key=key, baseline=baseline, metric=metric, mean=float(diff.mean()),
                            ci=_bootstrap_ci(diff, users[at_a]), num_examples=int(common.size),
                            num_users=int(np.unique(users[at_a]).size))


def matches(key: ConfigKey, runs: Sequence[Run], spec: str) -> bool:
    """Does a configuration match `--baseline` (comma-separated `config.key=value`, or a label: LoRA, iLoRA, ...)?"""
    if "=" not in spec:
        return key.label.lower() == spec.strip().lower()
    config = next((r.config for r in runs if r.config), {})
    for part in spec.split(","):
        name, _, want = part.partition("=")
        if str(_select(config, name.strip(), "\0")) != want.strip():
            return False
    return True


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


def summarize(key: ConfigKey, runs: list[Run], metric: str = DEFAULT_METRIC) -> GroupSummary:
    """Mean and sample std over completed seeds of the table metrics and `metric`, plus its user-level CI."""
    done = [r for r in runs if r.status == "completed"]
    means, stds = {}, {}
    for name in dict.fromkeys([c[1] for c in COLUMNS] + [metric]):
        vals = np.asarray([r.metrics[name] for r in done if not math.isnan(r.metrics.get(name, math.nan))])
        means[name] = float(vals.mean()) if vals.size else math.nan
        stds[name] = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
    _, values, users = example_values(done, metric)
    ci = _bootstrap_ci(values, users) if values.size else None
    return GroupSummary(key=key, runs=runs, means=means, stds=stds, ci=ci, num_users=int(np.unique(users).size))


# ---------------------------------------------------------------------------------------------- writing


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
    """One row per configuration (sorted by data, then K); the CI column is over test users."""
    columns = list(COLUMNS)
    if metric not in {c[1] for c in columns}:
        columns.insert(0, (metric, metric, 4))
    show_other = any(s.key.other for s in summaries)
    head = ["data", "backbone", "adapter", "K", "rank", "gate"] + (["other"] if show_other else [])
    head += ["seeds"] + [c[0] for c in columns] + [f"{metric} 95% CI (users)", "failed / unfinished"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for s in summaries:
        k = s.key
        cells = [k.data, k.backbone, k.label, str(k.num_experts), str(k.rank) if k.rank else "-", k.gate or "-"]
        if show_other:
            cells.append(", ".join(f"{n}={v}" for n, v in k.other) or "-")
        cells.append(str(len(s.completed)))
        cells += [_fmt(s.means[c[1]], s.stds[c[1]], c[2]) for c in columns]
        cells.append(f"[{s.ci[0]:.4f}, {s.ci[1]:.4f}] (n={s.num_users})" if s.ci else "-")
        cells.append(_problems(s) or "-")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


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


def _describe(key: ConfigKey) -> str:
    parts = [key.label, f"K={key.num_experts}", key.gate] + [f"{n}={v}" for n, v in key.other]
    return " ".join(p for p in parts if p)


def paired_table(diffs: Sequence[PairedDifference]) -> str:
    head = ["data", "configuration", "baseline", "metric", "mean difference", "95% CI (paired, users)", "examples",
            "users"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in diffs:
        cells = [d.key.data, _describe(d.key), _describe(d.baseline), d.metric, f"{d.mean:+.4f}",
                 f"[{d.ci[0]:+.4f}, {d.ci[1]:+.4f}]", str(d.num_examples), str(d.num_users)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def plot_paired(diffs: Sequence[PairedDifference], path: str | Path) -> Path:
    """One panel per metric: each configuration's mean difference to its dataset's baseline, with its interval."""
    plt = _pyplot()

    metrics = sorted({d.metric for d in diffs}) or ["(no pairs)"]
    rows = sorted({(d.key.data, _describe(d.key)) for d in diffs})
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 1.2 + 0.45 * max(len(rows), 1)),
                             squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for y, (data, label) in enumerate(rows):
            d = next((d for d in diffs if d.metric == metric and (d.key.data, _describe(d.key)) == (data, label)), None)
            if d is not None:
                ax.errorbar([d.mean], [y], xerr=[[d.mean - d.ci[0]], [d.ci[1] - d.mean]], fmt="o", capsize=3, color="C0")
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_yticks(range(len(rows)), [f"{data}: {label}" for data, label in rows], fontsize=7)
        baseline = _describe(diffs[0].baseline) if diffs else "baseline"
        ax.set(title=f"{metric} minus {baseline}", xlabel="mean paired difference (95% CI, users resampled)")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def read_curve(run: Run) -> list[dict[str, float]]:
    """The run's `curve.jsonl` rows (validation after N training examples); [] when absent or unreadable."""
    path = run.path / CURVE_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and "train_examples" in row:
            rows.append(row)
    return rows


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
                    label=f"{_describe(key)} s{seed}")
        ax.set(title=data, xlabel="training examples seen", ylabel=metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _point(s: GroupSummary, metric: str) -> float:
    return s.means.get(metric, math.nan)


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
             f"Mean ± std over completed seeds; 95% CI of `{metric}`: bootstrap over test users "
             "(1000 samples, seed 0), each user's value averaged over seeds.", "", table, ""]
    if paired:
        lines += [f"## Paired differences vs the baseline (`{baseline}`)", "",
                  "Per test example: configuration minus baseline, each averaged over its seeds, on the examples both "
                  "scored; the 95% interval resamples users with all their examples (1000 samples, seed 0).", "",
                  paired_table(paired), ""]
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
