"""Sweeps beyond one process (issue 25): a real submitit sweep reported like a local multirun, a requeued job that
continues from its own last.ckpt, one W&B group per sweep, and a resumable Optuna search scored on validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ILORA_TEST_CACHE", REPO / ".cache"))
TINY = ["backbone=tiny_random", f"backbone.cache_dir={CACHE}/backbones/smollm2_135m", "trainer.precision=32-true",
        "trainer.max_steps=2", "trainer.limit_train_batches=4", "trainer.val_check_interval=2",
        "data.limit_val_examples=4", "data.limit_test_examples=4", "encoder.train.max_epochs=1"]


@pytest.fixture
def env(tmp_path):
    return {**os.environ, "ILORA_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline", "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent),
                                                                     os.environ.get("PYTHONPATH", "")])}


def _train(env, *args, timeout=900):
    result = subprocess.run([sys.executable, "-m", "ilora.cli.train", *args], env=env, capture_output=True,
                            text=True, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


def test_a_submitit_local_sweep_is_reported_like_a_local_multirun(env, tmp_path):
    sweep = tmp_path / "sweep"
    _train(env, "-m", "hydra/launcher=local_jobs", "adapter.num_experts=1,2", "logger=none", *TINY,
           f"hydra.sweep.dir={sweep}")
    assert list((sweep / ".submitit").iterdir())  # the jobs went through submitit
    for job in ("0", "1"):
        assert json.loads((sweep / job / "status.json").read_text())["status"] == "completed"
    report = subprocess.run([str(Path(sys.executable).parent / "ilora-report"), str(sweep)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    table = (sweep / "report.md").read_text()
    assert "| LoRA | 1 |" in table and "| iLoRA | 2 |" in table and "Paired differences" in table


def test_a_job_told_it_timed_out_is_requeued_and_continues_from_its_own_last_ckpt(env, tmp_path):
    sweep = tmp_path / "sweep"
    marker = tmp_path / "signalled"
    _train(env, "-m", "hydra/launcher=local_jobs", "logger=none", *TINY,
           "trainer.max_steps=6", "trainer.limit_train_batches=12", "trainer.val_check_interval=3",
           "callbacks.last_checkpoint.every_n_train_steps=1",
           "+callbacks.requeue_signal._target_=requeue_helper.SignalOnce", "+callbacks.requeue_signal.step=3",
           f"+callbacks.requeue_signal.marker={marker}", f"hydra.sweep.dir={sweep}")
    assert marker.read_text().startswith("SIGUSR2")  # submitit caught it, checkpointed the job and requeued it
    logs = "".join(p.read_text(errors="replace") for p in (sweep / ".submitit").rglob("*_log.*"))
    assert "this job is" in logs and "requeued" in logs.lower()
    run = sweep / "0"
    assert json.loads((run / "status.json").read_text())["status"] == "completed"
    assert "resuming in place from" in logs  # the requeued job re-entered its own directory
    import torch

    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["global_step"] == 6
    curve = [json.loads(line)["step"] for line in (run / "curve.jsonl").read_text().splitlines()]
    assert curve == [3, 6]  # one validation per point: the resumed job replayed nothing it had finished


def test_every_job_of_a_multirun_is_one_wandb_group_with_its_overrides_as_tags(env, tmp_path, wandb_run_record_of):
    sweep = tmp_path / "sweep"
    _train(env, "-m", "adapter.num_experts=1,2", "logger=wandb", *TINY, f"hydra.sweep.dir={sweep}")
    records = [wandb_run_record_of(next((sweep / job / "wandb").glob("offline-run-*/run-*.wandb"))) for job in "01"]
    groups = {r.run_group for r in records}
    assert groups == {f"train-{sweep.name}"}
    assert {"adapter.num_experts=1", "adapter.num_experts=2"} == {
        t for r in records for t in r.tags if t.startswith("adapter.num_experts")}
    single = tmp_path / "single"
    _train(env, "logger=wandb", *TINY, f"hydra.run.dir={single}")
    record = wandb_run_record_of(next((single / "wandb").glob("offline-run-*/run-*.wandb")))
    assert record.run_group == "movielens" and not any(t.startswith("adapter") for t in record.tags)


def test_an_optuna_search_scores_validation_continues_from_its_study_file_and_prints_the_best(env, tmp_path):
    sweep = tmp_path / "search"
    search = ["hparams_search=optuna_val", "logger=none", *TINY, f"hydra.sweep.dir={sweep}"]
    first = _train(env, *search, "hydra.sweeper.n_trials=3")
    import optuna

    study = optuna.load_study(study_name="train-movielens", storage=f"sqlite:///{sweep}/optuna.db")
    assert len(study.trials) == 3
    for trial in study.trials:  # the objective is each run's final validation MRR, and no test ran at all
        metrics = json.loads((sweep / str(trial.number) / "metrics.json").read_text())
        assert trial.value == pytest.approx(metrics["val/rank_mrr"])
        assert not [k for k in metrics if k.startswith("test/")]
        config = yaml.safe_load((sweep / str(trial.number) / "config.yaml").read_text())
        assert config["adapter"]["rank"] == trial.params["adapter.rank"]
    best = yaml.safe_load((sweep / "best_trial.yaml").read_text())
    assert best["value"] == pytest.approx(study.best_value) and f"best trial #{best['trial']}" in first.stdout
    assert "its configuration:" in first.stdout
    assert "alembic" not in first.stdout + first.stderr  # the study file's schema set-up is not the user's news
    # the same command over the same directory continues: n_trials is the total, new trials get new directories
    _train(env, *search, "hydra.sweeper.n_trials=5")
    study = optuna.load_study(study_name="train-movielens", storage=f"sqlite:///{sweep}/optuna.db")
    assert len(study.trials) == 5 and all((sweep / str(n) / "metrics.json").is_file() for n in range(5))
    # a search objective must be a validation metric
    bad = subprocess.run([sys.executable, "-m", "ilora.cli.train", "optimized_metric=test/rank_hr@1", *TINY,
                          "logger=none", f"hydra.run.dir={tmp_path / 'bad'}"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "must optimise a validation metric" in bad.stderr
