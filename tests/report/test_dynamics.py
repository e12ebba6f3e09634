"""ilora.report.dynamics: curves over seeds, the gate with experts aligned by rank, the CPU cost."""

from __future__ import annotations

import pytest

from ilora.report import dynamics


def _run(method, seed, curve, gate=None, protocol="llara", wall=3600.0, data="lastfm"):
    return {"dataset": data, "protocol": protocol, "method": method, "seed": seed, "curve": curve, "gate": gate,
            "wall_time_s": wall, "machine": {"cpu": "Test CPU", "cores": 2, "precision": "bf16"}}


def _point(n, hr1, entropy=None):
    point = {"train_examples": n, "val/rank_hr@1": hr1, "val/num_examples": 122.0}
    if entropy is not None:
        point["val/gate_entropy"] = entropy
    return point


def test_curves_average_the_points_every_seed_reached_and_a_repeated_point_counts_once():
    runs = [_run("lora_k1", 1, [_point(512, 0.1), _point(1024, 0.2), _point(1536, 0.9)]),
            # resumed before its 1,024 point was saved: logged twice, the later value is the run's
            _run("lora_k1", 2, [_point(512, 0.3), _point(1024, 0.5), _point(1024, 0.4)]),
            _run("ilora_k4", 1, [_point(512, 0.2, 1.3)])]
    found = {c["method"]: c for c in dynamics.curves(runs)}
    lora = found["lora_k1"]
    assert lora["seeds"] == [1, 2]
    assert [p["train_examples"] for p in lora["points"]] == [512, 1024]  # 1,536: only seed 1 got there
    assert lora["points"][1]["val/rank_hr@1"]["mean"] == pytest.approx(0.3)  # (0.2 + 0.4) / 2, not with 0.5
    assert lora["points"][1]["val/rank_hr@1"]["sd"] == pytest.approx(0.1414213562)
    assert found["ilora_k4"]["points"][0]["val/rank_hr@1"]["sd"] is None  # one seed: no spread
    assert found["ilora_k4"]["points"][0]["val/gate_entropy"]["mean"] == pytest.approx(1.3)
    assert "val/gate_entropy" not in lora["points"][0]


def test_the_gate_aligns_experts_by_their_rank_within_each_run_before_averaging_seeds():
    def gate(weights, std, top, entropy):
        return {"entropy_mean": entropy, "entropy_min": entropy - 0.2, "entropy_uniform": 1.386,
                "weight_mean": weights, "weight_std_across_users": std, "top_expert_share": top}

    runs = [_run("ilora_k4", 1, [], gate([0.1, 0.6, 0.2, 0.1], [0.01, 0.06, 0.02, 0.03], [0.0, 0.9, 0.1, 0.0], 1.0)),
            _run("ilora_k4", 2, [], gate([0.5, 0.1, 0.1, 0.3], [0.05, 0.01, 0.01, 0.03], [0.7, 0.0, 0.0, 0.3], 1.2)),
            _run("lora_k1", 1, [], None)]
    (found,) = dynamics.gate_use(runs)
    assert found["method"] == "ilora_k4" and found["seeds"] == [1, 2]
    # expert 2 of seed 1 and expert 1 of seed 2 are each run's largest: they are averaged together
    assert found["weight_sorted"][:2] == pytest.approx([0.55, 0.25])
    assert found["weight_std_across_users"][0] == pytest.approx(0.055)  # the largest experts' spreads
    assert found["top_share_sorted"][:2] == pytest.approx([0.8, 0.2])
    assert found["entropy_mean"] == pytest.approx(1.1) and found["entropy_min"] == pytest.approx(0.8)
    text = dynamics.details_table({"gate": [found]})
    assert "| lastfm | ilora_k4 | 2 | 1.100 ± 0.141 (1.386) | 0.800 | 0.550 / 0.250" in text


def test_cpu_hours_count_each_training_once_and_name_the_machines():
    runs = [_run("lora_k1", 1, [], wall=1800.0), _run("lora_k1", 2, [], wall=3600.0),
            _run("lora_k1", 1, [], protocol="windows", wall=900.0, data="movielens"),  # a second look, not counted
            _run("lora_k1", 1, [], wall=7200.0, data="movielens")]
    hours = dynamics.cpu_hours(runs, {"lastfm": "llara", "movielens": "llara"})
    assert hours["per_method"] == {"lastfm/lora_k1": 1.5, "movielens/lora_k1": 2.0}
    assert hours["total"] == 3.5 and hours["machines"] == ["Test CPU, 2 cores, bf16"]
    assert "3.5 hours" in dynamics.details_table({"cpu_hours": hours})


def test_the_precision_of_each_seed_is_listed_per_dataset():
    runs = [_run("lora_k1", 1, []), _run("ilora_k4", 1, []), _run("lora_k1", 3, []), _run("frozen", 0, [])]
    runs[2]["machine"] = {**runs[2]["machine"], "precision": "fp32"}
    runs[3]["machine"] = {**runs[3]["machine"], "precision": "fp32"}  # untrained: not a seed of the comparison
    found = dynamics.precision_by_seed(runs + [_run("lora_k1", 2, [], data="movielens")])
    assert found == {"lastfm": {"bf16": [1], "fp32": [3]}, "movielens": {"bf16": [2]}}
    text = dynamics.details_table({"precision_by_seed": found})
    assert "lastfm: bf16 seed 1, fp32 seed 3; movielens: bf16 seed 2." in text


def test_paired_differences_are_split_by_precision_only_where_a_pair_has_seeds_in_both():
    precision = {"lastfm": {"bf16": [1, 2], "fp32": [3]}, "movielens": {"bf16": [1, 2]}}
    paired = [{"dataset": "lastfm", "protocol": "llara", "difference": "ilora_k4 - lora_k1",
               "rank_hr@1": {"per_seed": {"1": 0.10, "2": 0.00, "3": -0.20}}},
              {"dataset": "movielens", "protocol": "llara", "difference": "ilora_k4 - lora_k1",
               "rank_hr@1": {"per_seed": {"1": 0.10, "2": 0.00}}}]
    (found,) = dynamics.paired_by_precision(paired, precision)
    assert found["dataset"] == "lastfm" and found["by_precision"]["fp32"] == {"seeds": 1, "mean": -0.2, "sd": None}
    assert found["by_precision"]["bf16"]["mean"] == pytest.approx(0.05)
    assert found["by_precision"]["bf16"]["sd"] == pytest.approx(0.0707107, abs=1e-6)
    text = dynamics.details_table({"paired_by_precision": [found]})
    assert "| lastfm | llara | ilora_k4 - lora_k1 | +0.050 ± 0.071 (2 seeds) | -0.200 (1 seed) |" in text
    # a seed whose precision was not recorded gets its own column rather than vanishing from the table
    paired[1]["rank_hr@1"]["per_seed"]["4"] = 0.3
    (_, unknown) = dynamics.paired_by_precision(paired, precision)
    text = dynamics.details_table({"paired_by_precision": [unknown]})
    assert "| dataset | protocol | difference | bf16 | unrecorded |" in text
    assert "| movielens | llara | ilora_k4 - lora_k1 | +0.050 ± 0.071 (2 seeds) | +0.300 (1 seed) |" in text
