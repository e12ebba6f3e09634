"""The table a training run ends with: the LLM recommender's test metrics beside its own frozen encoder's."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ilora.encoders.io import read_config

ROWS = (
    ("HR@1 (ranking)", "test/rank_hr@1", "test/hr@1"),
    ("HR@5 (ranking)", "test/rank_hr@5", "test/hr@5"),
    ("NDCG@5 (ranking)", "test/rank_ndcg@5", "test/ndcg@5"),
    ("HR@1 (generation, correct/valid: the papers' HR@1)", "test/gen_hr@1_valid", None),
    ("HR@1 (generation, correct/all)", "test/gen_hr@1_all", None),
    ("ValidRatio (generation)", "test/gen_valid_ratio", None),
)


def summary_table(metrics: Mapping[str, float], encoder_dir: str | Path, encoder_name: str) -> str:
    """Markdown: one row per metric, the recommender and the encoder it was steered by (same test candidates)."""
    try:
        baseline = read_config(encoder_dir).get("metrics", {})
    except Exception:  # noqa: BLE001 - a summary must never fail a finished run
        baseline = {}
    n = int(metrics.get("test/num_examples", 0))
    lines = [f"| test metric ({n} users) | this run | {encoder_name} (frozen encoder) |", "|---|---|---|"]
    for label, ours, theirs in ROWS:
        if ours not in metrics:
            continue
        base = baseline.get(theirs) if theirs else None
        lines.append(f"| {label} | {metrics[ours]:.4f} | {'-' if base is None else f'{base:.4f}'} |")
    low, high = metrics.get("test/rank_hr@1_ci_low"), metrics.get("test/rank_hr@1_ci_high")
    if low is not None and high is not None:
        lines.append(f"| HR@1 (ranking) 95% CI over users | [{low:.4f}, {high:.4f}] | |")
    return "\n".join(lines)
