"""ilora-report on a fake Hydra multirun written by the run-directory contract of `ilora-train`."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats

from ilora.cli.report import main
from ilora.metrics import bootstrap_ci
from ilora.report import build_report, example_values, find_run_dirs, per_example_values

# Per-seed ranking hits of the 4 test users (index 0..3) for the two configurations.
HITS = {
    ("ilora", 0): [1, 0, 1, 0],
    ("ilora", 1): [0, 1, 0, 1],  # every user averages 0.5 over the seeds
    ("lora", 0): [1, 1, 1, 0],
    ("lora", 1): [1, 0, 0, 0],  # users average [1, .5, .5, 0]
}


def _config(kind: str, seed: int, out: str) -> dict:
    adapter = {"kind": "moe_lora", "rank": 8, "num_experts": 4 if kind == "ilora" else 1, "alpha": 32}
    return {
        "task_name": "train",
        "seed": seed,
        "data": {"name": "movielens", "dir": "/root/data/movielens"},
        "backbone": {"kind": "tiny_random", "seed": 0},
        "adapter": adapter,
        "gate": {"_target_": "ilora.adapters.gates.LinearGate", "_partial_": True, "temperature": 1.0},
        "model": {"optimizer": {"lr": 2e-4}},
        "paths": {"root_dir": "/root", "output_dir": out},
        "trainer": {"default_root_dir": out},
    }


def _predictions(hits: list[int], kind: str) -> list[dict]:
    rows = []
    for i, hit in enumerate(hits):
        # A miss on even users is a tie at the top (target 2 == other 2): ties never favour the target.
        scores = [2.0, 1.0, 0.0] if hit else ([2.0, 2.0, 0.0] if i % 2 == 0 else [1.0, 2.0, 0.0])
        row = {"index": i, "target_index": 0, "candidates": [10 + i, 20, 30], "scores": scores,
               "generated": "x", "choice": 0 if hit else -1}
        if kind == "ilora":
            row["gate"] = [0.25] * 4
        rows.append(row)
    return rows[::-1]  # file order differs from index order: users are matched by index


def _write_run(path, kind: str, seed: int, status: dict | None, hits: list[int] | None = None) -> None:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text(yaml.safe_dump(_config(kind, seed, str(path))))
    (path / ".hydra").mkdir()
    (path / ".hydra" / "config.yaml").write_text("seed: 0\n")  # Hydra's own copy: not a second run
    if status is not None:
        (path / "status.json").write_text(json.dumps(status))
    if hits is not None:
        hr1 = sum(hits) / len(hits)
        metrics = {"test/rank_hr@1": hr1, "test/rank_hr@5": 1.0, "test/rank_ndcg@5": 0.5 + hr1 / 2,
                   "test/gen_valid_ratio": hr1, "test/gen_hr@1_valid": 1.0, "test/gen_hr@1_all": hr1,
                   "wall_time_s": 10.0 * (seed + 1), "trainable_parameters": 100.0}
        (path / "metrics.json").write_text(json.dumps(metrics))
        lines = (json.dumps(r) for r in _predictions(hits, kind))
        (path / "predictions_test.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture
def multirun(tmp_path):
    """2 configs x 2 seeds completed, 1 failed (iLoRA seed 2), 1 unfinished (LoRA seed 2)."""
    root = tmp_path / "multirun"
    num = 0
    for (kind, seed), hits in HITS.items():
        _write_run(root / str(num), kind, seed, {"status": "completed"}, hits)
        num += 1
    _write_run(root / "4", "ilora", 2, {"status": "failed", "error": "CUDA out of memory\nTraceback (...)"})
    _write_run(root / "5", "lora", 2, None)
    return root


def _by_k(report):
    return {s.key.num_experts: s for s in report.summaries}


def test_report_groups_seeds_and_marks_failures(multirun):
    assert len(find_run_dirs([multirun])) == 6
    report = build_report([multirun])
    groups = _by_k(report)
    assert sorted(groups) == [1, 4]
    ilora, lora = groups[4], groups[1]
    assert (len(ilora.completed), len(lora.completed)) == (2, 2)
    assert ilora.key.gate == "LinearGate" and lora.key.gate == ""  # a single expert has no gate
    assert ilora.means["test/rank_hr@1"] == pytest.approx(0.5)
    assert ilora.stds["test/rank_hr@1"] == pytest.approx(0.0)
    assert lora.means["test/rank_hr@1"] == pytest.approx(0.5)
    assert lora.stds["test/rank_hr@1"] == pytest.approx(math.sqrt(0.125))  # values 0.75, 0.25
    assert ilora.means["wall_time_s"] == pytest.approx(15.0)

    rows = [line for line in report.table.splitlines() if line.startswith("| movielens")]
    assert len(rows) == 2 and "| LoRA |" in rows[0] and "| iLoRA |" in rows[1]  # sorted by K
    assert "0.5000 ± 0.3536" in rows[0]
    assert "FAILED seed 2: CUDA out of memory" in rows[1] and "Traceback" not in rows[1]
    assert "UNFINISHED seed 2" in rows[0]
    md = (multirun / "report.md").read_text()
    assert report.table in md and "## Failed and unfinished runs" in md
    assert sorted(r.status for r in report.problems) == ["failed", "unfinished"]


def test_ci_is_over_users_with_seeds_averaged(multirun):
    groups = _by_k(build_report([multirun]))
    ilora = [r for r in groups[4].runs if r.status == "completed"]
    index, values, users = example_values(ilora, "test/rank_hr@1")
    assert users.tolist() == index.tolist()  # no `user` in these predictions: each example is its own user
    assert index.tolist() == [0, 1, 2, 3] and values.tolist() == [0.5] * 4
    # Every user averages 0.5, so resampling users cannot move the mean; pooling (user, seed) pairs would.
    assert groups[4].ci == (0.5, 0.5)
    lora_users = np.array([1.0, 0.5, 0.5, 0.0])
    # a t interval over the 4 users' seed-averaged values (measured coverage 0.94-0.95: tests/report)
    expected = stats.t.interval(0.95, 3, loc=lora_users.mean(), scale=lora_users.std(ddof=1) / 2)
    assert groups[1].ci == pytest.approx(expected)
    assert set(groups[1].intervals) == {"users"}  # two seeds: the seed intervals need 3 (where coverage was measured)
    low, high = groups[1].ci
    assert low < groups[1].means["test/rank_hr@1"] < high
    assert groups[1].num_users == 4


def test_per_example_hits_tie_is_a_miss():
    rows = [{"index": 7, "target_index": 1, "scores": [3.0, 3.0, 0.0]},
            {"index": 8, "target_index": 1, "scores": [2.9, 3.0, 0.0], "choice": 1}]
    assert per_example_values(rows, "test/rank_hr@1") == {7: 0.0, 8: 1.0}
    assert per_example_values(rows, "test/gen_hr@1_all") == {}  # row 7 has no choice
    assert per_example_values(rows[1:], "test/gen_hr@1_all") == {8: 1.0}


def test_swept_setting_is_not_averaged_with_the_default(multirun):
    config = yaml.safe_load((multirun / "1" / "config.yaml").read_text())
    config["model"]["optimizer"]["lr"] = 1e-3
    (multirun / "1" / "config.yaml").write_text(yaml.safe_dump(config))
    keys = [s.key for s in build_report([multirun]).summaries if s.key.num_experts == 4]
    assert sorted(dict(k.other)["model.optimizer.lr"] for k in keys) == ["0.0002", "0.001"]


def test_cli_writes_png_and_rejects_empty_dir(multirun, tmp_path, capsys):
    out = tmp_path / "out"
    main([str(multirun), "--out", str(out)])
    assert "| movielens" in capsys.readouterr().out
    assert (out / "hr1_vs_experts.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "report.md").is_file()

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(empty)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no run directories") and str(empty) in err and "\n" not in err


def test_paired_difference_vs_the_lora_baseline(multirun, capsys):
    report = build_report([multirun])  # default baseline: adapter.num_experts=1 (LoRA)
    (hr1,) = [d for d in report.paired if d.metric == "test/rank_hr@1"]
    assert hr1.key.num_experts == 4 and hr1.baseline.num_experts == 1
    # per user (seeds averaged): iLoRA [.5, .5, .5, .5] - LoRA [1, .5, .5, 0] = [-.5, 0, 0, .5]
    assert hr1.mean == pytest.approx(0.0) and (hr1.num_examples, hr1.num_users) == (4, 4)
    diff = np.array([-0.5, 0.0, 0.0, 0.5])
    assert hr1.ci == pytest.approx(stats.t.interval(0.95, 3, loc=0.0, scale=diff.std(ddof=1) / 2))
    md = (multirun / "report.md").read_text()
    assert "## Paired differences vs the baseline (`adapter.num_experts=1`)" in md
    assert "| movielens | iLoRA K=4 LinearGate | LoRA K=1 | test/rank_hr@1 | 2 | +0.0000 |" in md
    assert (multirun / "paired_vs_baseline.png").stat().st_size > 0
    main([str(multirun), "--baseline", "iLoRA"])
    assert "paired differences vs iLoRA" in capsys.readouterr().out
    assert not build_report([multirun], baseline=None).paired


def test_paired_interval_resamples_users_with_all_their_windows(tmp_path):
    """Two windows per user, the second a copy of the first: the interval is the one-window-per-user interval."""
    root = tmp_path / "windows"
    for num, (kind, seed) in enumerate([("ilora", 0), ("lora", 0)]):
        path = root / str(num)
        _write_run(path, kind, seed, {"status": "completed"}, HITS[(kind, seed)])
        rows = [json.loads(line) for line in (path / "predictions_test.jsonl").read_text().splitlines()]
        doubled = [{**r, "index": 2 * r["index"] + copy, "user": r["index"]} for r in rows for copy in (0, 1)]
        (path / "predictions_test.jsonl").write_text("\n".join(json.dumps(r) for r in doubled) + "\n")
    single = tmp_path / "single"
    for num, (kind, seed) in enumerate([("ilora", 0), ("lora", 0)]):
        _write_run(single / str(num), kind, seed, {"status": "completed"}, HITS[(kind, seed)])
    (windows,) = [d for d in build_report([root]).paired if d.metric == "test/rank_hr@1"]
    (users,) = [d for d in build_report([single]).paired if d.metric == "test/rank_hr@1"]
    assert (windows.num_examples, windows.num_users) == (8, 4)
    assert windows.mean == pytest.approx(users.mean) and windows.ci == pytest.approx(users.ci)
    naive = bootstrap_ci(np.repeat([0.0, -1.0, 0.0, 0.0], 2))  # treating windows as independent users
    assert (naive[1] - naive[0]) < (windows.ci[1] - windows.ci[0])
