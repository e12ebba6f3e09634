"""`ilora-bench --dry-run` and the GPU script's dry run: every key, sane values, on tiny shapes (seconds)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ilora.bench import report
from ilora.bench.timing import interleaved_medians

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("layer_ratio", "step_ratio_vs_peft", "step_ratio_k1_vs_peft", "flop_utilisation", "rank_cost_vs_prefill",
        "peak_rss_gb", "ckpt_ratio", "gen_newline_users_per_s", "gen_fixed_users_per_s", "rank_hr@1",
        "gen_newline_hr@1_valid", "gen_fixed_hr@1_valid")


def test_interleaved_medians_rotates_and_skips_warmup():
    calls = []
    med = interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert set(med) == {"a", "b"} and all(v >= 0 for v in med.values())
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_report_marks_targets():
    text = report.markdown({"layer_ratio": 1.01, "flop_utilisation": 0.1, "machine": {}})
    assert "| `layer_ratio` | 1.01 | <= 1.05 | yes |" in text
    assert "| `flop_utilisation` | 0.1 | >= 0.6 | **no** |" in text


def test_ilora_bench_dry_run(tmp_path, monkeypatch):
    from ilora.cli.bench import bench

    monkeypatch.setenv("ILORA_CACHE", str(ROOT / ".cache"))  # the shared SmolLM2 tokenizer copy
    results = bench(["--dry-run", "--out", str(tmp_path), "--users", "4", "--profile", "--baseline",
                     "--micro-batch-table", "2"])
    stored = json.loads((tmp_path / "bench.json").read_text())
    for key in KEYS:
        assert key in stored, key
    assert stored["layer_ratio"] > 0 and stored["step_ratio_vs_peft"] > 0
    assert 0 < stored["flop_utilisation"] < 2
    assert stored["rank_cost_vs_prefill"] > 1  # ranking includes the prompt encoding
    assert stored["rank_token_ratio"] == (12 + 4 * 2) / (12 + 3)  # dry-run shape: prompt 12, 4 candidates of 3
    assert stored["rank_step_vs_tokens"] == stored["rank_step_ratio"] / stored["rank_token_ratio"] > 0
    assert 0 < stored["ckpt_ratio"] < 1 and stored["peak_rss_gb"] > 0
    # the model checkpoint holds the trainable weights; last.ckpt adds AdamW's two moments per weight
    assert 2 < stored["resume_ckpt_bytes"] / stored["ckpt_bytes"] < 3.5
    assert stored["eval_users"] >= 4 and 0 <= stored["rank_hr@1"] <= 1
    assert set(stored["targets_met"]) == set(report.TARGETS)
    for suffix in ("", "_study"):  # the default config (answer loss) and the study's recipe (rank loss)
        assert stored[f"train_examples_per_s{suffix}"] > 0
        assert 0 <= stored[f"train_padding_share{suffix}"] < 1
        top = stored[f"profile{suffix or '_default'}_top"]
        assert top and sum(row["self_cpu_share"] for row in top) <= 1 + 1e-9
        assert (tmp_path / f"profile_train_step{suffix or '_default'}.txt").read_text().count("aten::") > 3
    # the rank loss also runs the packed candidates: more tokens per example than prompt + answer
    assert stored["train_tokens_per_example_study"] > stored["train_tokens_per_example"]
    assert stored["eval_users_per_s"] > 0 and 0 <= stored["eval_padding_share"] < 1
    assert isinstance(results["machine"]["avx512_bf16"], bool)
    # --baseline: today's eager path at the earlier micro-batch sizes, timed in the same process
    assert stored["train_setup_baseline"].startswith("eager, micro-batch 2 x 4, rank pass split")
    assert stored["train_setup_study_baseline"].startswith("eager, micro-batch 4 x 2, rank pass split")
    for suffix in ("", "_study"):
        assert stored[f"train_speedup{suffix}"] == (stored[f"train_examples_per_s{suffix}"]
                                                    / stored[f"train_examples_per_s{suffix}_baseline"])
    # --micro-batch-table: one child per (recipe, size, eager/compiled); the compiled ones on the tiny backbone
    rows = stored["micro_batch_table"]
    assert [(r["recipe"], r["micro_batch"], r["compiled"]) for r in rows] == [
        ("default", 2, False), ("default", 2, True), ("study", 2, False), ("study", 2, True)]
    for row in rows:
        assert "error" not in row, row
        assert row["examples_per_s"] > 0 and row["peak_rss_gb"] > 0
        assert row["setup"].startswith("compiled" if row["compiled"] else "eager")
        assert row["graph_breaks"] == 0 and (row["graphs"] >= 1) == row["compiled"]
    assert "| study | 2 x 4 | compiled |" in (tmp_path / "micro_batches.md").read_text()
    assert "| `layer_ratio` |" in (tmp_path / "bench.md").read_text()
    assert results["machine"]["loadavg"]


def test_bench_gpu_dry_run(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "experiments" / "bench" / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--dry-run", "--out", str(tmp_path), "--repeats", "1"])
    smol = results["smollm2"]
    for key in ("layer_ratio", "step_ratio_vs_peft", "step_ratio_k1_vs_peft", "flop_utilisation", "samples_per_s",
                "movielens_epoch_s_estimate"):
        assert smol[key] > 0, key
    rows = results["llama2_7b_shape"]
    assert {(r["micro_batch"], r["checkpointing"]) for r in rows} == {(1, False), (2, False), (1, True), (2, True)}
    assert all(r["step_s"] > 0 for r in rows)
    assert (tmp_path / "bench_gpu.md").is_file()


def test_padding_counts_cover_the_packed_candidate_rows():
    """Answer layout: the [B, T] grid. Prompt layout: + each row's packed candidate tokens, padded to the longest."""
    import torch

    from ilora.bench.throughput import padding_counts

    answer = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), "labels": torch.zeros(2, 4)}
    assert padding_counts(answer) == (7, 8)
    cand = torch.tensor([[[1, 1, 1], [1, 1, 0]], [[1, 0, 0], [1, 0, 0]]])  # fed: the first L-1 slots (4 and 2)
    prompt = {"attention_mask": torch.tensor([[0, 1, 1], [1, 1, 1]]), "cand_attention_mask": cand}
    assert padding_counts(prompt) == (5 + 4 + 2, 6 + 2 * 4)


@pytest.mark.parametrize("key", list(report.TARGETS))
def test_every_target_has_a_direction(key):
    op, target, what = report.TARGETS[key]
    assert op in ("<=", ">=") and target > 0 and what
