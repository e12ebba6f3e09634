"""Reading `ilora-train` run directories: config, status, metrics, test predictions and learning curves.

A run directory is any directory holding `config.yaml` (searched recursively; hidden and `wandb` folders and the
inside of a run directory are skipped). Beside it: `status.json` (completed / failed; absent = unfinished),
`metrics.json` (flat floats), `predictions_test.jsonl` (one object per test example) and `curve.jsonl`
(validation after N training examples). Nothing here raises on a bad run: it is marked failed and listed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ilora.errors import DataError

DEFAULT_METRIC = "test/rank_hr@1"
PREDICTIONS_NAME = "predictions_test.jsonl"
CURVE_FILE = "curve.jsonl"
_SKIP_DIRS = {"wandb", "checkpoints", "__pycache__"}


@dataclass
class Run:
    path: Path
    status: str  # completed | failed | unfinished
    error: str = ""
    seed: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    key: Any = None  # its `ilora.report.grouping.ConfigKey`, once grouped


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


def select(config: dict[str, Any], dotted: str, default: Any = None) -> Any:
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
        return Run(path=path, status="failed", error=f"config.yaml unreadable: {first_line(str(e))}")
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
            run.status, run.error = "failed", first_line(str(status.get("error", "")) or "no error message")
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
            run.metrics = {k: to_float(v) for k, v in metrics.items()}
    return run


def first_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def to_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


