"""Grouping runs by configuration: everything but the seed, so different settings are never averaged together.

`ConfigKey` holds data, backbone, adapter kind, K (frozen LLM = 0, LoRA = 1), rank and gate, plus any other config
value that differs between the runs of that group (e.g. a swept learning rate). Paths and per-run values are ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from ilora.report.runs import Run, select

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


def _base_key(config: dict[str, Any]) -> ConfigKey:
    adapter = str(select(config, "adapter.kind", "?"))
    if adapter == "none":
        k, rank, gate = 0, 0, ""
    else:
        k = int(select(config, "adapter.num_experts", 1) or 1)
        rank = int(select(config, "adapter.rank", 0) or 0)
        target = select(config, "gate._target_")
        gate = str(target).rsplit(".", 1)[-1] if target and k > 1 else ""
    return ConfigKey(data=str(select(config, "data.name", "?")), num_experts=k,
                     backbone=str(select(config, "backbone.kind", "?")), adapter=adapter, rank=rank, gate=gate)


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


def matches(key: ConfigKey, runs: Sequence[Run], spec: str) -> bool:
    """Does a configuration match `--baseline` (comma-separated `config.key=value`, or a label: LoRA, iLoRA, ...)?"""
    if "=" not in spec:
        return key.label.lower() == spec.strip().lower()
    config = next((r.config for r in runs if r.config), {})
    for part in spec.split(","):
        name, _, want = part.partition("=")
        if str(select(config, name.strip(), "\0")) != want.strip():
            return False
    return True


def describe(key: ConfigKey) -> str:
    parts = [key.label, f"K={key.num_experts}", key.gate] + [f"{n}={v}" for n, v in key.other]
    return " ".join(p for p in parts if p)


