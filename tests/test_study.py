"""experiments/study/run.py end to end on the tiny backbone: train, resume, both MovieLens protocols, results.json."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ILORA_TEST_CACHE", REPO / ".cache"))
TINY = ["backbone=tiny_random", f"backbone.cache_dir={CACHE}/backbones/smollm2_135m", "logger=none",
        "trainer.precision=32-true", "trainer.max_steps=2", "trainer.limit_train_batches=4",
        "trainer.val_check_interval=2", "data.limit_val_examples=4", "data.limit_test_examples=12",
        "encoder.train.max_epochs=1", "callbacks.last_checkpoint.every_n_train_steps=1"]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def study(tmp_path, monkeypatch):
    module = _load("study_run", REPO / "experiments" / "study" / "run.py")
    monkeypatch.setattr(module, "OUT", tmp_path / "out")
    monkeypatch.setattr(module, "PINNED", tmp_path / "pinned")  # tiny runs train their own encoder
    (tmp_path / "cache").mkdir()
    os.symlink(CACHE / "backbones", tmp_path / "cache" / "backbones")
    monkeypatch.setenv("ILORA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return module


def test_study_runs_resumes_and_reports_paired_differences(study, tmp_path, shared_data, monkeypatch, capsys):
    results = tmp_path / "results"
    argv = ["--study", "first", "--datasets", "movielens", "--methods", "lora_k1", "ilora_k4", "--seeds", "0",
            "--results", str(results), "--extra", *TINY,
            "--eval-extra", "data.limit_test_examples=60", "trainer.precision=32-true"]
    assert study.main(argv) == 0
    out = json.loads((results / "results.json").read_text())
    runs = {(r["protocol"], r["method"]): r for r in out["runs"]}
    assert set(runs) == {(p, m) for p in ("llara", "windows") for m in ("lora_k1", "ilora_k4")}
    for (protocol, _method), r in runs.items():
        assert set(r) >= {"rank_hr@1", "rank_hr@5", "rank_ndcg@5", "n_test", "train_examples", "wall_time_s"}
        assert r["n_test"] == (12 if protocol == "llara" else 60)
        assert r["train_examples"] == 2 * 4 * 2  # 2 steps x batch 4 x accumulation 2
    windows = json.loads((results / "runs" / "movielens__windows__ilora_k4__s0.json").read_text())
    assert len(set(windows["user"])) < len(windows["user"]) == 60  # several windows per user
    pairs = {(p["protocol"], p["difference"]): p for p in out["paired"]}
    assert {("llara", "ilora_k4 - lora_k1"), ("windows", "ilora_k4 - lora_k1")} <= set(pairs)
    hr1 = pairs[("windows", "ilora_k4 - lora_k1")]["rank_hr@1"]
    low, high = hr1["intervals"]["users"]["ci95"]
    assert low <= hr1["mean"] <= high and hr1["intervals"]["users"]["estimand"] == "runs"
    assert set(hr1["intervals"]) == {"users"}  # one seed each: no interval that counts training noise
    assert hr1["per_seed"]["0"] == pytest.approx(runs[("windows", "ilora_k4")]["rank_hr@1"]
                                                 - runs[("windows", "lora_k1")]["rank_hr@1"])
    methods = {(s["protocol"], s["method"]) for s in out["summary"]}
    assert ("windows", "sasrec") in methods and ("llara", "sasrec") in methods  # the frozen encoder, same examples
    # SASRec's ranks are recorded like a run, tied by its weights' SHA-256 to the encoder that steered the runs
    sasrec = json.loads((results / "runs" / "movielens__windows__sasrec__s0.json").read_text())
    assert set(windows["index"]) < set(sasrec["index"]) and len(sasrec["encoder_sha256"]) == 64  # all test windows
    assert sasrec["encoder_sha256"] == windows["encoder_sha256"]
    assert all(s["encoder_of_the_runs"] is True for s in out["summary"] if s["method"] == "sasrec")
    assert {s["n_test"] for s in out["summary"] if s["protocol"] == "windows"} == {60}
    assert out["machine"]["precision"] in ("bf16", "fp32")
    for png in ("hr1.png", "paired_hr1.png", "learning_curves.png"):
        assert (results / png).stat().st_size > 0
    assert windows["curve"] and windows["curve"][-1]["train_examples"] == 16
    assert len(windows["commit"].split("+")[0]) == 40 and windows["machine"]["precision"] in ("bf16", "fp32")

    # a recorded run is kept, also where its run directories are gone (a fresh clone: outputs/ is not committed)
    before_runs = {p.name: p.read_text() for p in (results / "runs").glob("*.json")}
    os.rename(study.OUT, tmp_path / "elsewhere")
    assert study.main(argv) == 0
    assert not study.OUT.exists() and {p.name: p.read_text() for p in (results / "runs").glob("*.json")} == before_runs
    os.rename(tmp_path / "elsewhere", study.OUT)

    # an interrupted run (no completed status, nothing recorded) resumes from its last.ckpt in a new attempt directory
    base = study.OUT / "movielens__ilora_k4__s0"
    (base / "attempt0" / "status.json").unlink()
    (base / "windows" / "status.json").unlink()
    for path in (results / "runs").glob("movielens__*__ilora_k4__s0.json"):
        path.unlink()
    assert study.main(argv + ["--only", "movielens/ilora_k4/0"]) == 0
    assert (base / "attempt1" / "status.json").is_file()
    from omegaconf import OmegaConf

    resumed_from = OmegaConf.load(base / "attempt1" / "config.yaml").ckpt_path  # the new attempt resumed the old one
    assert resumed_from == str(base / "attempt0" / "checkpoints" / "last.ckpt")
    again = json.loads((results / "runs" / "movielens__llara__ilora_k4__s0.json").read_text())
    assert again["attempts"] == 2

    # the results rebuild from the per-run JSON alone: no encoder, no backbone (a fresh clone)
    before = (results / "results.json").read_text()
    monkeypatch.setenv("ILORA_CACHE", str(tmp_path / "empty_cache"))
    assert study.main(["--table-only", "--study", "first", "--results", str(results)]) == 0
    assert (results / "results.json").read_text() == before

    # without SASRec's record its row is left out, said in one line, and everything else stands
    for path in (results / "runs").glob("*__sasrec__*.json"):
        path.unlink()
    capsys.readouterr()
    assert study.main(["--table-only", "--study", "first", "--results", str(results)]) == 0
    assert "movielens/windows: no SASRec record" in capsys.readouterr().out
    rebuilt = json.loads((results / "results.json").read_text())
    assert "sasrec" not in {s["method"] for s in rebuilt["summary"]}
    assert rebuilt["paired"] == json.loads(before)["paired"]


def test_a_study_with_only_the_frozen_llm_recorded_rebuilds_without_warnings(study, tmp_path):
    """The powered study's first record is the frozen LLM (no training, no curve): its plots still draw cleanly."""
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    frozen = REPO / "experiments" / "study" / "powered" / "runs" / "movielens__llara__frozen__s0.json"
    shutil.copy(frozen, results / "runs" / frozen.name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert study.main(["--table-only", "--study", "powered", "--no-coverage", "--results", str(results)]) == 0
    out = json.loads((results / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in out["runs"]] == [("frozen", 0)] and out["curves"] == []
    assert (results / "learning_curves.png").stat().st_size > 0


def test_the_gate_summary_names_no_top_expert_where_the_weights_tie(study):
    """A uniform gate has no top expert: each tied expert gets its share (argmax alone would give the first all)."""
    import numpy as np

    uniform = study.gate_summary(np.full((6, 4), 0.25, dtype=np.float32))
    assert uniform["top_expert_share"] == pytest.approx([0.25] * 4)
    assert uniform["entropy_mean"] == pytest.approx(np.log(4))
    learned = study.gate_summary(np.array([[0.7, 0.1, 0.1, 0.1], [0.1, 0.2, 0.6, 0.1], [0.4, 0.4, 0.1, 0.1]]))
    assert learned["top_expert_share"] == pytest.approx([1 / 3 + 1 / 6, 1 / 6, 1 / 3, 0.0])


def test_a_pinned_encoder_is_put_in_the_cache_and_a_different_cached_one_stops_the_study(study, tmp_path):
    pinned = tmp_path / "pinned" / "lastfm"
    pinned.mkdir(parents=True)
    (pinned / "config.json").write_text('{"name": "sasrec"}')
    (pinned / "encoder.safetensors").write_bytes(b"pinned weights")
    study.pin_encoder("lastfm")
    cached = study.encoder_dir("lastfm")
    assert (cached / "encoder.safetensors").read_bytes() == b"pinned weights"
    assert (cached / "config.json").read_text() == '{"name": "sasrec"}'
    study.pin_encoder("lastfm")  # the same encoder: nothing to do
    (cached / "encoder.safetensors").write_bytes(b"retrained elsewhere")
    with pytest.raises(SystemExit, match="cached SASRec differs from the study's pinned encoder"):
        study.pin_encoder("lastfm")
    assert (cached / "encoder.safetensors").read_bytes() == b"retrained elsewhere"  # never overwritten
    study.pin_encoder("movielens")  # nothing pinned for it: the cache decides, as before
    assert not study.encoder_dir("movielens").exists()


def test_the_committed_lastfm_runs_were_steered_by_the_pinned_encoder(study):
    import hashlib

    pinned = hashlib.sha256((study.HERE / "encoders" / "lastfm" / "encoder.safetensors").read_bytes()).hexdigest()
    lastfm = [json.loads(p.read_text()) for p in (study.HERE / "runs").glob("lastfm__*.json")]
    assert lastfm and {r["encoder_sha256"] for r in lastfm} == {pinned}


def test_dry_run_lists_every_planned_run_and_starts_nothing(study, capsys):
    assert study.main(["--dry-run", "--study", "first", "--results", str(study.OUT / "r")]) == 0
    printed = capsys.readouterr().out
    plan = study.planned()  # the study's own plan: every run once, + the frozen LLM on the windows protocol
    windows = [r for r in plan if len(study.DATASETS[r[0]]) > 1]
    assert len(plan) >= 17 and printed.count("ilora-train experiment=study") == len(plan) + sum(
        m == "frozen" for _, m, _ in windows)
    assert "data=lastfm gate=uniform seed=2" in printed and "data=movielens gate=uniform seed=2" not in printed
    assert printed.count("ilora-eval") == sum(m != "frozen" for _, m, _ in windows)  # trained runs, extended protocol
    # evaluated in index order, as every recorded run was (bf16 scores move with the batch composition)
    assert printed.count("data.eval_order=index") == printed.count("ilora-eval")
    assert not (study.OUT / "movielens__ilora_k4__s0").exists()


def test_the_powered_study_trains_each_method_at_its_learning_rate_chosen_on_validation(study, tmp_path, capsys):
    study.VALIDATION_DIR = tmp_path / "validation"
    plan = study.planned(study=study.POWERED)
    assert {(m, len([r for r in plan if r[:2] == ("lastfm", m)])) for m in study.POWERED.seeds} == {
        ("lora_k1", 8), ("ilora_k4", 8), ("uniform_k4", 3), ("frozen", 1)}
    assert plan[:4] == [("movielens", "frozen", 0), ("lastfm", "frozen", 0),  # then pairs first, seed by seed
                        ("movielens", "lora_k1", 1), ("movielens", "ilora_k4", 1)]
    # seed 0 trained the learning-rate check; its run at the chosen rate was selected on validation, so the
    # comparison's seeds are others, and the uniform gate's are a subset of them (paired by seed)
    assert {s for _, m, s in plan if m != "frozen"} == set(range(1, 9))
    assert {s for _, m, s in plan if m == "uniform_k4"} <= {s for _, m, s in plan if m == "lora_k1"}
    # before the learning-rate check the dry run shows the gap, and a real run stops with one line
    assert study.main(["--dry-run", "--results", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("ilora-train experiment=study") == len(plan)
    assert printed.count("model.optimizer.lr=PENDING_LR_CHECK") == len(plan) - 2  # all but the frozen LLM
    assert f"trainer.max_steps={study.BUDGET // 8}" in printed
    # a real run of a pair without its check waits with one line each, trains nothing, and the lane goes on
    assert study.main(["--results", str(tmp_path / "r"), "--only", "movielens/lora_k1/1", "lastfm/ilora_k4/2"]) == 1
    printed = capsys.readouterr().out
    assert "movielens/lora_k1/seed1 waits: " in printed and "check of movielens/lora_k1 is not recorded yet" in printed
    assert "lastfm/ilora_k4/seed2 waits: " in printed and "2 run(s) wait for their learning-rate check" in printed
    assert not study.OUT.exists() or not any(study.OUT.rglob("attempt*"))
    # the recorded check decides: best final val HR@1, ties broken by val MRR
    study.VALIDATION_DIR.mkdir()
    scores = {3e-4: (0.20, 0.40), 1e-3: (0.25, 0.41), 3e-3: (0.25, 0.45)}
    for data in ("movielens", "lastfm"):
        for method in ("lora_k1", "ilora_k4"):
            for lr, (hr1, mrr) in scores.items():
                name = study.validation_name(data, method, 0, lr, study.BUDGET)
                (study.VALIDATION_DIR / f"{name}.json").write_text(json.dumps(
                    {"dataset": data, "method": method, "seed": 0, "lr": lr, "train_examples": study.BUDGET,
                     "wall_time_s": 60.0, "machine": {}, "threads": "1",
                     "curve": [{"train_examples": n, "val/rank_hr@1": hr1 if n == study.BUDGET else 0.9,
                                "val/rank_mrr": mrr} for n in (study.BUDGET - 512, study.BUDGET)]}))
    assert study.chosen_lr("lastfm", "ilora_k4") == 3e-3
    # the score at the budget decides, never an earlier point standing in for a lost final validation
    name = study.validation_name("lastfm", "ilora_k4", 0, 3e-3, study.BUDGET)
    record = json.loads((study.VALIDATION_DIR / f"{name}.json").read_text())
    lost = {**record, "curve": record["curve"][:1]}
    (study.VALIDATION_DIR / f"{name}.json").write_text(json.dumps(lost))
    with pytest.raises(study.CheckPending, match=f"{name}.json has no validation at 4,096 examples"):
        study.chosen_lr("lastfm", "ilora_k4")
    (study.VALIDATION_DIR / f"{name}.json").write_text(json.dumps(record))
    assert study.main(["--dry-run", "--results", str(tmp_path / "r")]) == 0
    printed = capsys.readouterr().out
    assert printed.count("model.optimizer.lr=0.003") == len(plan) - 2 and "PENDING" not in printed


def test_validation_runs_are_planned_once_and_split_between_lanes(study, capsys):
    plan = [study.validation_name(*r) for r in study.validation_plan()]
    assert len(plan) == len(set(plan)) == 4 + 4 * 2  # four curves (lr 1e-3) + the two other rates of the check
    assert plan[0] == "movielens__lora_k1__s0__lr1e-3__b4096"
    study.VALIDATION_DIR = study.OUT / "validation_records"
    lanes = []
    for lane in ("0/2", "1/2"):
        assert study.main(["--validation", "--dry-run", "--lane", lane]) == 0
        lanes.append([line for line in capsys.readouterr().out.splitlines() if line.startswith("[study] validation")])
    assert len(lanes[0]) + len(lanes[1]) == len(plan) and not set(lanes[0]) & set(lanes[1])


def test_a_run_resumes_from_its_newest_saved_checkpoint_past_attempts_that_saved_none(study, tmp_path, capsys):
    base = tmp_path / "run"
    for name in ("attempt0", "attempt1", "attempt2"):
        (base / name).mkdir(parents=True)
    for name in ("attempt0", "attempt1"):  # attempt2 stopped while loading, before its first save
        (base / name / "checkpoints").mkdir()
        (base / name / "checkpoints" / "last.ckpt").write_bytes(name.encode())
    assert study.train_run(base, ["data=lastfm"], [], dry_run=True) == base / "attempt3"
    command = capsys.readouterr().out
    assert f"ckpt_path={base / 'attempt1' / 'checkpoints' / 'last.ckpt'}" in command
    assert f"hydra.run.dir={base / 'attempt3'}" in command
    # nothing saved anywhere: a fresh start, not a resume
    assert study.train_run(tmp_path / "fresh", ["data=lastfm"], [], dry_run=True) == tmp_path / "fresh" / "attempt0"
    assert "ckpt_path=" not in capsys.readouterr().out


def test_a_runs_wall_time_counts_its_stopped_attempts_from_start_to_last_write(study, tmp_path):
    stopped, finished = tmp_path / "attempt0", tmp_path / "attempt1"
    (stopped / "checkpoints").mkdir(parents=True)
    finished.mkdir()
    (stopped / "config.yaml").write_text("seed: 0\n")
    (stopped / "checkpoints" / "last.ckpt").write_bytes(b"x")
    os.utime(stopped / "config.yaml", (1_000_000, 1_000_000))
    os.utime(stopped / "checkpoints" / "last.ckpt", (1_000_600, 1_000_600))  # its last save, 10 minutes in
    (finished / "config.yaml").write_text("seed: 0\n")
    (finished / "metrics.json").write_text(json.dumps({"wall_time_s": 100.0}))
    assert study._wall_time([stopped, finished]) == pytest.approx(700.0)
    assert study._wall_time([tmp_path / "attempt9"]) == 0.0  # never started: nothing


def test_a_resumed_runs_curve_has_each_point_once_the_later_attempts(study, tmp_path):
    first, second = tmp_path / "attempt0", tmp_path / "attempt1"
    for attempt, rows in ((first, [(512, 0.1), (1024, 0.2)]), (second, [(1024, 0.3), (1536, 0.4)])):
        attempt.mkdir()  # the second resumed from a save made before 1,024 and logged it again
        (attempt / "curve.jsonl").write_text("".join(
            json.dumps({"step": n // 8, "train_examples": n, "val/rank_hr@1": hr1, "lr": 1e-3}) + "\n"
            for n, hr1 in rows))
    curve = study._curve([first, second])
    assert [(c["train_examples"], c["val/rank_hr@1"]) for c in curve] == [(512, 0.1), (1024, 0.3), (1536, 0.4)]
    assert "lr" not in curve[0]  # only the kept keys


def _assert_same(got, want, where="results"):
    """Equal structure and values; floats to 1e-9 (another numpy build may round a sum differently)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for key in want:
            _assert_same(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, float):
        assert got == pytest.approx(want, rel=1e-9, abs=1e-12), where
    else:
        assert got == want, where


def test_the_committed_results_follow_from_the_committed_runs(study):
    """results.json's intervals and paired differences are what run.py computes from runs/*.json (no hand edits)."""
    committed = json.loads((study.HERE / "results.json").read_text())
    from ilora.report import records as analysis

    records = [json.loads(p.read_text()) for p in sorted((study.HERE / "runs").glob("*.json"))]
    runs = [r for r in records if r["method"] != "sasrec"]
    sasrec = {f"{r['dataset']}/{r['protocol']}": r for r in records if r["method"] == "sasrec"}
    assert runs and len(committed["runs"]) == len(runs)
    panels = [(d, p) for d, ps in study.FIRST.datasets.items() for p in ps]
    recomputed = analysis.summarise(runs, sasrec, panels, list(study.FIRST.seeds), study.PAIRS)
    _assert_same(recomputed["paired"], committed["paired"])
    _assert_same(recomputed["summary"], committed["summary"])
    pair = next(e for e in committed["paired"] if e["difference"] == "ilora_k4 - lora_k1")
    for interval in pair["rank_hr@1"]["intervals"].values():
        assert interval["ci95"][0] <= pair["rank_hr@1"]["mean"] <= interval["ci95"][1]


def test_the_study_config_evaluates_in_index_order():
    from hydra import compose, initialize_config_dir

    from ilora.cli import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for data in ("movielens", "movielens_windows", "lastfm"):
            cfg = compose(config_name="train", overrides=["experiment=study", f"data={data}"])
            assert cfg.data.eval_order == "index", data


def test_gpu_study_script_dry_run_plans_one_epoch_of_k1_and_k4_on_cuda(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "PY": sys.executable, "ILORA_STUDY_OUT": str(tmp_path / "out")}
    result = subprocess.run(["bash", str(REPO / "experiments" / "gpu" / "study.sh"), "--dry-run"], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    trains = [line for line in result.stdout.splitlines() if "ilora-train experiment=study" in line]
    evals = [line for line in result.stdout.splitlines() if "ilora-eval" in line]
    assert len(trains) == 2 and len(evals) == 2
    assert "adapter=lora" in trains[0] and "adapter=lora" not in trains[1]
    for line in trains:
        assert "trainer=gpu" in line and "trainer.max_epochs=1" in line and "trainer.max_steps=-1" in line
    assert all("data=movielens_windows" in line and "trainer=gpu" in line for line in evals)
    assert not (tmp_path / "out").exists()


def test_write_readmes_rewrites_stale_generated_blocks_and_leaves_current_ones(study, tmp_path, monkeypatch, capsys):
    """`run.py --write-readmes` on copies of both READMEs: the committed ones are current (nothing rewritten); a
    stale number in a generated block is put back from results.json, the prose around it untouched."""
    copies = []
    for readme in study.READMES:
        copy = tmp_path / readme.relative_to(REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(readme.read_text())
        copies.append(copy)
    monkeypatch.setattr(study, "READMES", tuple(copies))
    assert study.main(["--write-readmes"]) == 0
    assert capsys.readouterr().out.count(": current") == 2
    assert [c.read_text() for c in copies] == [r.read_text() for r in study.READMES]

    text = copies[1].read_text()
    start = text.index("<!-- generated: powered/summary -->")
    row = text.index("| frozen | 1 | ", start)
    stale = text[:row] + "| frozen | 1 | 0.999 " + text[row + len("| frozen | 1 | 0.074 "):]
    copies[1].write_text(stale.replace("Two studies live here.", "Two studies live here (a user's edit)."))
    assert study.main(["--write-readmes"]) == 0
    assert "README.md: rewritten" in capsys.readouterr().out
    fixed = copies[1].read_text()
    assert "0.999" not in fixed and "Two studies live here (a user's edit)." in fixed
    assert fixed == study.READMES[1].read_text().replace("Two studies live here.",
                                                          "Two studies live here (a user's edit).")

    with pytest.raises(SystemExit):  # the READMEs quote the committed studies, never another folder
        study.main(["--write-readmes", "--results", str(tmp_path / "elsewhere")])
    assert "drop --results / --study" in capsys.readouterr().err

    front = copies[0].read_text()  # README.md stale, the study README's marker broken: nothing is written
    front = front.replace("| frozen | 1 | 0.074 ", "| frozen | 1 | 0.999 ", 1)
    copies[0].write_text(front)
    copies[1].write_text(fixed.replace("<!-- end: powered/summary -->", ""))
    assert study.main(["--write-readmes"]) == 2
    assert "'powered/summary' has no '<!-- end: powered/summary -->'" in capsys.readouterr().err
    assert copies[0].read_text() == front


def test_the_readmes_quote_results_json_and_the_validation_summary(study, capsys):
    """The results sections are generated from results.json (`run.py --readme`), not typed: a test keeps them so."""
    from ilora.report import dynamics
    from ilora.report import records as analysis

    readme, study_readme = ((REPO / "README.md").read_text(), (study.HERE / "README.md").read_text())
    for results in (study.HERE, study.HERE / "powered"):
        if not (results / "results.json").is_file():
            continue
        committed = json.loads((results / "results.json").read_text())
        tables = analysis.readme_tables(committed)
        assert tables in study_readme, f"{results.name}: run.py --readme differs from experiments/study/README.md"
        assert tables in readme, f"{results.name}: run.py --readme differs from README.md"
        if committed["coverage"]:  # empty while no panel has two seeds of both methods (a study under way)
            assert analysis.coverage_table(committed["coverage"]) in study_readme
        assert dynamics.details_table(committed) in study_readme, f"{results.name}: curves, gate and cost differ"
        assert study.main(["--readme", "--study", "first" if results == study.HERE else "powered"]) == 0
        printed = capsys.readouterr().out  # what the README tells a user to run prints both
        assert tables in printed and dynamics.details_table(committed) in printed
        assert (analysis.coverage_table(committed["coverage"]) in printed) == bool(committed["coverage"])
        if committed["power"]:  # the seeds a ±0.03 interval needs, projected from the recorded seeds
            power = analysis.power_table(committed["power"])
            assert power in study_readme and power in printed
    summary = json.loads((study.VALIDATION_DIR / "summary.json").read_text())
    assert analysis.validation_table(summary) in study_readme
    found = [json.loads(p.read_text()) for p in sorted(study.VALIDATION_DIR.glob("*__b*.json"))]
    recomputed = analysis.validation_summary(found, budget=study.BUDGET, grid=study.LR_GRID)
    assert json.loads(json.dumps(recomputed)) == summary  # the summary follows from validation/*.json


def _recorded(results: Path, data: str, method: str, seed: int, precision: str) -> None:
    (results / "runs").mkdir(parents=True, exist_ok=True)
    (results / "runs" / f"{data}__llara__{method}__s{seed}.json").write_text(json.dumps(
        {"dataset": data, "method": method, "seed": seed, "machine": {"precision": precision}}))


def test_every_method_of_a_seed_runs_in_the_precision_its_recorded_runs_used(study, tmp_path, capsys):
    """bf16 on one machine and fp32 on the next must not meet inside a paired difference: a seed recorded in bf16
    is left for a bf16 machine (one line), a new seed takes the precision asked for, and a checkpoint trained in
    the other precision is not resumed in this one."""
    results = tmp_path / "r"
    _recorded(results, "movielens", "lora_k1", 2, "bf16")
    _recorded(results, "movielens", "frozen", 0, "fp32")  # untrained: no seed to pair
    only = ["--only", "movielens/ilora_k4/2", "movielens/ilora_k4/3", "movielens/frozen/0"]
    assert study.main(["--dry-run", "--results", str(results), "--precision", "fp32", *only]) == 0
    printed = capsys.readouterr().out
    assert ("movielens/ilora_k4/seed2 left for a bf16 machine: seed 2 of movielens was recorded in bf16 "
            "(this one runs fp32)") in printed
    assert "seed=2" not in printed and printed.count("trainer.precision=32-true backbone.dtype=float32") == 1
    assert "powered movielens/ilora_k4/seed3 (fp32)" in printed
    assert study.main(["--dry-run", "--results", str(results), "--precision", "bf16", *only]) == 0
    printed = capsys.readouterr().out
    assert "left for" not in printed and printed.count("trainer.precision=bf16-mixed backbone.dtype=bfloat16") == 2
    # native: no override (the config's own rule), the clash judged against this CPU's native precision
    assert study.main(["--dry-run", "--results", str(results), *only]) == 0
    printed = capsys.readouterr().out
    assert "trainer.precision=" not in printed
    assert ("left for a bf16 machine" in printed) == (study.native_precision() == "fp32")
    # a checkpoint trained in bf16 is resumed in bf16 only
    attempt = study.POWERED.out() / "movielens__ilora_k4__s3" / "attempt0"
    attempt.mkdir(parents=True)
    (attempt / "config.yaml").write_text("trainer:\n  precision: bf16-mixed\n")
    assert study.main(["--dry-run", "--results", str(results), "--precision", "fp32", *only]) == 0
    assert (f"movielens/ilora_k4/seed3 left for a bf16 machine: its checkpoint under {attempt.parent} trained in bf16"
            in capsys.readouterr().out)
    # records of one seed that disagree stop the study before anything runs
    _recorded(results, "movielens", "uniform_k4", 2, "fp32")
    with pytest.raises(SystemExit, match="seed 2 of movielens mixes precisions"):
        study.main(["--dry-run", "--results", str(results), "--precision", "bf16", *only])


def test_a_record_names_the_precision_its_run_used_not_the_cpus_native_one(study):
    assert study.config_precision({"trainer": {"precision": "bf16-mixed"}}) == "bf16"
    assert study.config_precision({"trainer": {"precision": "32-true"}}) == "fp32"
    assert study.machine("fp32")["precision"] == "fp32" and study.machine("bf16")["precision"] == "bf16"
    assert study.machine()["precision"] == study.native_precision()


def test_extra_trainer_precision_is_the_precision_the_seed_check_uses(study, tmp_path, capsys):
    results = tmp_path / "r"
    _recorded(results, "lastfm", "lora_k1", 4, "fp32")
    argv = ["--dry-run", "--results", str(results), "--only", "lastfm/ilora_k4/4", "--precision", "bf16"]
    assert study.main([*argv, "--extra", "trainer.precision=32-true"]) == 0
    assert "powered lastfm/ilora_k4/seed4 (fp32)" in capsys.readouterr().out
    assert study.main(argv) == 0
    assert "left for a fp32 machine" in capsys.readouterr().out
