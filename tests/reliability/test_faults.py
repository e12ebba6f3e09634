"""Faults: SIGTERM, a crash in the middle of a checkpoint write, a non-finite loss, a resumed W&B run, and prompts
longer than the backbone's context. Real processes and signals where the fault is a process-level one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from ilora.checkpoints import read_checkpoint

pytestmark = pytest.mark.reliability

# Sleep in each training step and note the step reached (so the test knows when to send its signal).
SLOW_STEPS = """
import os, time
from ilora.recommender import Recommender as R
_step = R.training_step
def _slow(self, batch, i):
    open(os.environ["ILORA_TEST_MARK"], "w").write(str(self.global_step))
    time.sleep(0.3)
    return _step(self, batch, i)
R.training_step = _slow
"""

# The second checkpoint write stops halfway (the bytes are written and flushed, then the process hangs until
# it is killed): what a crash or a full disk in the middle of `torch.save` leaves behind.
HANG_IN_SECOND_SAVE = """
import io, os, time, torch
_save, _count = torch.save, [0]
def _hanging_save(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and "state_dict" in obj:
        _count[0] += 1
        if _count[0] == 2:
            buffer = io.BytesIO()
            _save(obj, buffer, *args, **kwargs)
            data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(data); f.flush()
            else:
                open(f, "wb").write(data)
            open(os.environ["ILORA_TEST_MARK"], "w").write("hanging")
            time.sleep(600)
    return _save(obj, f, *args, **kwargs)
torch.save = _hanging_save
"""


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    raise AssertionError("timed out waiting for the run")


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(cli, tiny, tmp_path):
    """No periodic checkpoint is due (every 100 steps): the last.ckpt on disk is the one SIGTERM made."""
    run, mark = tmp_path / "run", tmp_path / "step"
    proc = subprocess.Popen(
        cli("train", *tiny(), "trainer.max_steps=40", "trainer.limit_train_batches=40", "trainer.max_epochs=1",
            "callbacks.last_checkpoint.every_n_train_steps=100", f"hydra.run.dir={run}", prelude=SLOW_STEPS),
        env={**os.environ, "ILORA_TEST_MARK": str(mark)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _wait_for(lambda: mark.is_file() and mark.read_text().strip() not in ("", "0", "1"), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err
    last = run / "checkpoints" / "last.ckpt"
    assert f"SIGTERM: saved {last}" in err
    checkpoint = read_checkpoint(last)
    assert 2 <= checkpoint["global_step"] < 40
    assert checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] >= 2
    status = json.loads((run / "status.json").read_text())
    assert status == {"status": "interrupted", "resume": str(last)}


def test_crash_during_a_checkpoint_write_leaves_the_previous_checkpoint_whole(cli, tiny, tmp_path):
    run, mark = tmp_path / "run", tmp_path / "hanging"
    proc = subprocess.Popen(
        cli("train", *tiny(), "callbacks.last_checkpoint.every_n_train_steps=1", "trainer.limit_val_batches=0",
            f"hydra.run.dir={run}", prelude=HANG_IN_SECOND_SAVE),
        env={**os.environ, "ILORA_TEST_MARK": str(mark)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    _wait_for(mark.is_file, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    checkpoint = read_checkpoint(run / "checkpoints" / "last.ckpt")  # whole and readable: the first save
    assert checkpoint["global_step"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(run_main, tiny, tmp_path, monkeypatch,
                                                                        encoder_cache):
    from ilora.recommender import Recommender

    answer_loss = Recommender.answer_loss

    def nan_at_step_3(self, batch, embeds, gate):
        loss = answer_loss(self, batch, embeds, gate)
        return loss * float("nan") if self.global_step == 3 else loss

    monkeypatch.setattr(Recommender, "answer_loss", nan_at_step_3)
    run = tmp_path / "run"
    result = run_main("train", *tiny(), "trainer.max_steps=6", "trainer.limit_train_batches=6",
                      "model.evaluation.generate=false", f"hydra.run.dir={run}")
    assert result.code == 2 and "Traceback" not in result.err, result.err[-2000:]
    assert len(result.err_lines) == 1 and result.err_lines[0].startswith("error: non-finite training loss nan at "
                                                                          "global step 3"), result.err
    last = run / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    assert checkpoint["global_step"] == 2  # every 2 steps: the last one before the bad step
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())
    assert json.loads((run / "status.json").read_text())["status"] == "failed"

    monkeypatch.setattr(Recommender, "answer_loss", answer_loss)
    loaded = run_main("eval", f"ckpt_path={last}", "logger=none", "trainer.precision=32-true",
                      f"paths.encoder_dir={encoder_cache}", f"hydra.run.dir={tmp_path / 'eval'}")
    assert loaded.code == 0, loaded.err[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    records = [json.loads(line) for line in (tmp_path / "eval" / "predictions_test.jsonl").read_text().splitlines()]
    scores = torch.tensor([r["scores"] for r in records])
    assert torch.isfinite(scores).all() and metrics["test/num_examples"] == len(records) == 6
    target = scores[torch.arange(len(records)), torch.tensor([r["target_index"] for r in records])]
    hits = ((scores >= target[:, None]).sum(1) == 1).float()  # the target alone at the top (ties count against it)
    assert metrics["test/rank_hr@1"] == pytest.approx(hits.mean().item())


def test_resumed_run_continues_the_wandb_run_in_a_new_directory(trained_run, train_cfg, digest, monkeypatch):
    from ilora.cli.train import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    original = digest(trained_run / "checkpoints", trained_run / "metrics.json", trained_run / "status.json")
    run_id = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)["wandb_run_id"]
    cfg = train_cfg("logger=wandb", f"ckpt_path={trained_run / 'checkpoints' / 'last.ckpt'}", "trainer.max_steps=6",
                    "trainer.max_epochs=2", "trainer.limit_train_batches=6", "model.evaluation.generate=false",
                    "test_ckpt=last", run="resumed")
    train(cfg)
    resumed = Path(cfg.paths.output_dir)
    assert resumed != trained_run
    assert [p.name.rsplit("-", 1)[-1] for p in (resumed / "wandb").glob("offline-run-*")] == [run_id]
    assert torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    assert digest(trained_run / "checkpoints", trained_run / "metrics.json", trained_run / "status.json") == original


def test_long_prompts_drop_whole_oldest_items_to_fit_the_backbone_context(train_cfg, capsys):
    """A tiny backbone context (64 tokens): prompts are cut to fit, whole titles only, and the count is reported."""
    from ilora.cli.components import build_all
    from ilora.cli.train import train

    cfg = train_cfg("+backbone.max_position_embeddings=64", "trainer.max_steps=2", "trainer.limit_train_batches=2",
                    "trainer.limit_val_batches=0", "model.evaluation.max_new_tokens=4", "data.limit_test_examples=4")
    metrics, objects = train(cfg)
    # every prompt of this dataset is longer than 64 tokens: each distinct example counts once
    assert metrics["data/test_prompts_truncated"] == 4 and metrics["data/train_prompts_truncated"] == 8
    limit = objects["datamodule"].prompt_token_limit
    assert limit is not None and limit < 64
    assert f"prompts exceeded {limit} tokens" in capsys.readouterr().out

    datamodule = build_all(cfg)["datamodule"]
    datamodule.setup("test")
    collator = datamodule.collators["test"]
    examples = [datamodule.datasets["test"][i] for i in range(4)]
    batch = collator(examples)
    assert int(batch["attention_mask"].sum(1).max()) <= limit
    dropped = []
    for row, example in enumerate(examples):
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        history, cands = list(example["history"]), list(example["candidates"])
        fits = [k for k in range(len(history) + 1) for t in range(len(collator.parts))
                if ids == _prompt(collator, t, history[k:], cands)]
        assert fits, f"example {row}: the prompt is not built from whole titles of a history suffix"
        dropped.append(fits[0])
    assert any(dropped)


def _prompt(collator, template: int, history: list[int], candidates: list[int]) -> list[int]:
    """The hybrid eval prompt of template `template` showing exactly these (whole) items."""
    head, middle, tail = collator.parts[template]

    def items(ids: list[int]) -> list[int]:
        out: list[int] = []
        for j, item in enumerate(ids):
            out += (collator.separator if j else []) + collator.title_ids[item] + [collator.slot_id]
        return out

    return collator.prefix + head + items(history) + middle + items(candidates) + tail


# SIGTERM to itself in the middle of micro-batch ILORA_TEST_KILL_AT (batch index), once.
SIGTERM_AT_BATCH = """
import os, signal
from ilora.recommender import Recommender as R
_step, _at = R.training_step, int(os.environ["ILORA_TEST_KILL_AT"])
def _step_then_term(self, batch, i):
    out = _step(self, batch, i)
    if i == _at:
        os.kill(os.getpid(), signal.SIGTERM)
    return out
R.training_step = _step_then_term
"""


def test_sigterm_at_every_position_of_an_accumulation_window_resumes_to_the_same_weights(cli, tiny, tmp_path):
    """Accumulation over 3 micro-batches, validation between saves: SIGTERM after the first, second or third
    micro-batch of a window, then a resume, ends with the trainable weights of the uninterrupted run."""
    common = [*tiny(), "trainer.max_steps=4", "trainer.accumulate_grad_batches=3", "trainer.limit_train_batches=12",
              "trainer.val_check_interval=4", "callbacks.last_checkpoint.every_n_train_steps=100",
              "model.evaluation.generate=false", "data.limit_test_examples=2"]
    full = tmp_path / "full"
    done = subprocess.run(cli("train", *common, f"hydra.run.dir={full}"), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    want = read_checkpoint(full / "checkpoints" / "last.ckpt")["state_dict"]
    for kill_at in (3, 4, 5):  # positions 0, 1, 2 of the second window
        run = tmp_path / f"term{kill_at}"
        stopped = subprocess.run(cli("train", *common, f"hydra.run.dir={run}", prelude=SIGTERM_AT_BATCH),
                                 env={**os.environ, "ILORA_TEST_KILL_AT": str(kill_at)}, capture_output=True, text=True,
                                 timeout=600)
        assert stopped.returncode == 143, stopped.stderr[-2000:]
        last = run / "checkpoints" / "last.ckpt"
        saved = read_checkpoint(last)
        assert saved["global_step"] == 2  # held to the end of the window: an optimiser-step boundary
        assert saved["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"] == 6
        resumed = subprocess.run(cli("train", *common, f"hydra.run.dir={tmp_path / f'resumed{kill_at}'}",
                                     f"ckpt_path={last}"), capture_output=True, text=True, timeout=600)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        got = read_checkpoint(tmp_path / f"resumed{kill_at}" / "checkpoints" / "last.ckpt")["state_dict"]
        assert got.keys() == want.keys()
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=1e-6, msg=f"kill at {kill_at}: {key}")


# The process dies (SIGKILL: a session ending) in the first validation at global step ILORA_TEST_KILL_AT, once.
KILL_IN_VALIDATION = """
import os, signal
from ilora.recommender import Recommender as R
_step, _at, _mark = R.validation_step, int(os.environ["ILORA_TEST_KILL_AT"]), os.environ["ILORA_TEST_MARK"]
def _die_in_validation(self, batch, i):
    if self.global_step == _at and not os.path.exists(_mark):
        open(_mark, "w").write("killed")
        os.kill(os.getpid(), signal.SIGKILL)
    return _step(self, batch, i)
R.validation_step = _die_in_validation
"""


@pytest.mark.parametrize("kill_at", [2, 4], ids=["mid-run", "final"])
def test_a_run_killed_during_a_validation_logs_that_point_when_resumed(cli, tiny, tmp_path, kill_at):
    """A save at a step that validates is made after the validation: Lightning reads one made before it as
    validated, so the resume would skip the point the kill interrupted (the final one: the learning-rate check's)."""
    common = [*tiny(), "trainer.max_steps=4", "trainer.accumulate_grad_batches=2", "trainer.limit_train_batches=8",
              "trainer.val_check_interval=4", "callbacks.last_checkpoint.every_n_train_steps=1",
              "model.evaluation.generate=false", "data.limit_test_examples=2"]
    env = {**os.environ, "ILORA_TEST_KILL_AT": str(kill_at), "ILORA_TEST_MARK": str(tmp_path / "killed")}
    first = subprocess.run(cli("train", *common, f"hydra.run.dir={tmp_path / 'a0'}", prelude=KILL_IN_VALIDATION),
                           env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    last = tmp_path / "a0" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == kill_at - 1  # the save due at the killed step waited
    second = subprocess.run(cli("train", *common, f"hydra.run.dir={tmp_path / 'a1'}", f"ckpt_path={last}",
                                prelude=KILL_IN_VALIDATION), env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    steps = [json.loads(line)["step"] for a in ("a0", "a1") if (tmp_path / a / "curve.jsonl").is_file()
             for line in (tmp_path / a / "curve.jsonl").read_text().splitlines()]
    assert sorted(steps) == [2, 4]  # each validation point once: the killed one redone, none repeated
    assert read_checkpoint(tmp_path / "a1" / "checkpoints" / "last.ckpt")["global_step"] == 4
