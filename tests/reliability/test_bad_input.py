"""Bad input through the real CLIs: one line `error: ...` naming the file or setting, exit code 2, no traceback,
nothing started (no training step; where possible no backbone load) and existing outputs untouched.

Most cases call the real Hydra entry point (`_hydra_main`) in-process; `test_real_processes` runs a few of
them as subprocesses of the console scripts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import ilora.cli.components as components
from ilora.recommender import Recommender

pytestmark = pytest.mark.reliability


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """Any training step fails the test: every error here must come before training starts."""

    def refuse(self, batch, batch_idx):
        raise AssertionError("a training step ran before the bad input was reported")

    monkeypatch.setattr(Recommender, "training_step", refuse)


@pytest.fixture
def no_backbone(monkeypatch):
    """Loading the backbone fails the test (for errors that must come before the slow part)."""

    def refuse(**kwargs):
        raise AssertionError("the backbone was loaded before the bad input was reported")

    monkeypatch.setattr(components, "load_backbone", refuse)


def assert_clean_failure(result, *fragments: str) -> None:
    assert result.code == 2, (result.code, result.err[-2000:])
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1, result.err
    line = result.err_lines[0]
    assert line.startswith("error: "), line
    for fragment in fragments:
        assert fragment in line, (fragment, line)


# ----------------------------------------------------------------------------------------------- data


def _rewrite(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


def _set_column(name: str, array: pa.Array):
    return lambda t: t.set_column(t.column_names.index(name), name, array)


def _replace_first(column: str, value):
    def change(t: pa.Table) -> pa.Table:
        values = t.column(column).to_pylist()
        values[0] = value
        return t.set_column(t.column_names.index(column), column, pa.array(values, type=t.schema.field(column).type))

    return change


def _edit_meta(**changes):
    def edit(root: Path) -> None:
        meta = json.loads((root / "meta.json").read_text())
        meta.update(changes)
        (root / "meta.json").write_text(json.dumps(meta))

    return edit


DATA_CASES = {
    # name: (corrupt(root), fragments of the one-line error)
    "missing directory": (lambda root: shutil.rmtree(root), ["dataset directory not found"]),
    "missing split": (lambda root: (root / "val.parquet").unlink(), ["val.parquet", "split 'val' not found"]),
    "missing items file": (lambda root: (root / "items.parquet").unlink(), ["items.parquet", "file not found"]),
    "empty file": (lambda root: _rewrite(root / "test.parquet", lambda t: t.slice(0, 0)),
                   ["test.parquet", "empty (0 rows)"]),
    "not parquet": (lambda root: (root / "train.parquet").write_bytes(b"PAR1 this is not parquet"),
                    ["train.parquet", "not a readable parquet file"]),
    "missing column": (lambda root: _rewrite(root / "train.parquet", lambda t: t.drop_columns(["target"])),
                       ["train.parquet", "missing column 'target'"]),
    "wrong column": (lambda root: _rewrite(root / "val.parquet", lambda t: t.rename_columns(
        ["seq" if c == "history" else c for c in t.column_names])), ["val.parquet", "missing column 'history'"]),
    "float target": (lambda root: _rewrite(root / "train.parquet", lambda t: _set_column(
        "target", pa.array(t.column("target").to_numpy().astype("float64")))(t)),
        ["train.parquet", "'target' must be integer, got double"]),
    "string history": (lambda root: _rewrite(root / "train.parquet", lambda t: _set_column(
        "history", pa.array([[str(i) for i in h] for h in t.column("history").to_pylist()]))(t)),
        ["train.parquet", "'history' must be list<int64>"]),
    "string title dtype": (lambda root: _rewrite(root / "items.parquet", lambda t: _set_column(
        "title", pa.array(range(t.num_rows)))(t)), ["items.parquet", "'title' must be string"]),
    "NaN target": (lambda root: _rewrite(root / "test.parquet", _replace_first("target", None)),
                   ["test.parquet", "'target' has 1 null/NaN values"]),
    "NaN history id": (lambda root: _rewrite(root / "train.parquet", _replace_first("history", [1, None, 2])),
                       ["train.parquet", "1 null/NaN item ids"]),
    "target outside catalogue": (lambda root: _rewrite(root / "val.parquet", _replace_first("target", 40)),
                                 ["val.parquet", "target item ids outside 0..39"]),
    "negative history id": (lambda root: _rewrite(root / "train.parquet", _replace_first("history", [3, -1])),
                            ["train.parquet", "history item ids outside 0..39"]),
    "titles missing": (lambda root: _rewrite(root / "items.parquet", lambda t: t.slice(0, t.num_rows - 1)),
                       ["items.parquet", "titles missing for 1 of 40 item ids"]),
    "duplicate item ids": (lambda root: _rewrite(root / "items.parquet", _replace_first("item_id", 1)),
                           ["items.parquet", "duplicate item ids"]),
    "history longer than window": (lambda root: _rewrite(root / "train.parquet", _replace_first(
        "history", list(range(11)))), ["train.parquet", "longer than the window 10"]),
    "negative window": (_edit_meta(window=-1), ["meta.json", "window must be >= 1"]),
    "negative num_items": (_edit_meta(num_items=-5, padding_id=-5), ["meta.json", "num_items must be >= 1"]),
    "meta not json": (lambda root: (root / "meta.json").write_text("{oops"), ["meta.json", "not valid JSON"]),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_dataset_fails_in_one_line_before_anything_loads(case, run_main, tiny, tiny_data_dir, tmp_path,
                                                              no_backbone, digest):
    corrupt, fragments = DATA_CASES[case]
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    corrupt(data)
    previous = tmp_path / "outputs" / "train" / "runs" / "previous"  # an earlier run's outputs
    previous.mkdir(parents=True)
    (previous / "metrics.json").write_text('{"test/rank_hr@1": 0.5}\n')
    before = digest(previous, data) if data.exists() else digest(previous)
    run = tmp_path / "run"
    result = run_main("train", *tiny(data), f"hydra.run.dir={run}")
    assert_clean_failure(result, *fragments)
    assert (digest(previous, data) if data.exists() else digest(previous)) == before
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "failed" and status["traceback"] == ""
    assert not (run / "checkpoints").exists()


# ---------------------------------------------------------------------------------------------- config


def _vision_model(tmp_path: Path) -> Path:
    from transformers import ViTConfig

    directory = tmp_path / "vit"
    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(directory)
    return directory


def _weightless_llama(tmp_path: Path) -> Path:
    from transformers import LlamaConfig

    directory = tmp_path / "llama"
    LlamaConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(directory)
    return directory


CONFIG_CASES = {
    # name: (overrides(tmp_path), fragments, fails before the backbone loads)
    "rank not divisible": (lambda p: ["adapter.rank=8", "adapter.num_experts=3"],
                           ["adapter.num_experts=3 does not divide adapter.rank=8"], True),
    "no experts": (lambda p: ["adapter.num_experts=0"], ["adapter.num_experts=0 must be >= 1"], True),
    "more candidates than catalogue": (lambda p: ["data.num_candidates=35"],
                                       ["data.num_candidates=35", "lower data.num_candidates"], True),
    "backbone path missing": (lambda p: ["backbone=hf", f"backbone.path={p / 'nope'}"],
                              ["backbone.path=", "not a local model directory"], True),
    "encoder dimension differs from its cache": (lambda p: ["encoder.hidden_dim=32"],
                                                 ["hparams.hidden_dim=16 but 32 was requested"], True),
    "targets match nothing": (lambda p: ["adapter.targets=[no_such_proj]"],
                              ["adapter.targets=['no_such_proj'] matches no nn.Linear module"], False),
    "backbone not a causal LM": (lambda p: ["backbone=hf", f"backbone.path={_vision_model(p)}"],
                                 ["is a ViTConfig, not a causal language model"], False),
    "backbone without weights": (lambda p: ["backbone=hf", f"backbone.path={_weightless_llama(p)}"],
                                 ["backbone.path=", "cannot load the model"], False),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_impossible_config_fails_before_training(case, run_main, tiny, trained_run, tmp_path, monkeypatch):
    """`trained_run` first: the encoder cache then holds the 16-dim encoder that the tiny config asks for."""
    overrides, fragments, before_backbone = CONFIG_CASES[case]
    if before_backbone:
        monkeypatch.setattr(components, "load_backbone", lambda **kw: pytest.fail("the backbone was loaded"))
    extra = overrides(tmp_path)
    replaced = {e.split("=")[0] for e in extra} | ({"backbone.cache_dir"} if "backbone=hf" in extra else set())
    args = [a for a in tiny() if a.split("=")[0] not in replaced]
    result = run_main("train", *args, *extra, f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(result, *fragments)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------------------ checkpoints


@pytest.fixture
def bad_checkpoints(trained_run, tmp_path) -> dict[str, Path]:
    good = trained_run / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    reshaped = tmp_path / "reshaped.ckpt"  # same config, tensors of another adapter shape
    ckpt = torch.load(good, weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("lora_A"))
    ckpt["state_dict"][key] = torch.zeros(4, ckpt["state_dict"][key].shape[1])
    torch.save(ckpt, reshaped)
    (best,) = (trained_run / "checkpoints").glob("best-*.ckpt")  # weights only (callbacks.model_checkpoint)
    return {"good": good, "truncated": truncated, "foreign": foreign, "reshaped": reshaped,
            "missing": tmp_path / "missing.ckpt", "best": best}


CKPT_CASES = {
    # name: (tool, checkpoint, extra overrides, fragments)
    "train: missing": ("train", "missing", [], ["missing.ckpt does not exist"]),
    "train: truncated": ("train", "truncated", [], ["truncated.ckpt cannot be read (truncated"]),
    "train: not a Lightning checkpoint": ("train", "foreign", [], ["foreign.ckpt has no state_dict"]),
    "train: other adapter shape": ("train", "good", ["adapter.num_experts=2"],
                                   ["trained with adapter.num_experts=4, this run has 2"]),
    "train: other encoder dimension": ("train", "good", ["encoder.hidden_dim=32"],
                                       ["trained with encoder.hidden_dim=16, this run has 32"]),
    "train: other backbone": ("train", "good", ["+backbone.num_hidden_layers=1"],
                              ["trained with backbone.num_hidden_layers=None, this run has 1"]),
    "train: tensors of another shape": ("train", "reshaped", [], ["lora_A has shape (4, 64), the model expects (8, 64)"]),
    # settings that rescale the saved adapter, or that the replay of the interrupted run depends on (issue 23)
    "train: other alpha": ("train", "good", ["adapter.alpha=64"], ["trained with adapter.alpha=32, this run has 64"]),
    "train: other scaling": ("train", "good", ["adapter.scaling=rank"],
                             ["trained with adapter.scaling='expert', this run has 'rank'"]),
    "train: other dropout": ("train", "good", ["adapter.dropout=0.2"],
                             ["trained with adapter.dropout=0.1, this run has 0.2", "must keep it to replay"]),
    "train: other micro-batch": ("train", "good", ["data.batch_size=2"],
                                 ["trained with data.batch_size=4, this run has 2", "set data.batch_size=4"]),
    "train: other accumulation": ("train", "good", ["trainer.accumulate_grad_batches=2"],
                                  ["trained with trainer.accumulate_grad_batches=1, this run has 2"]),
    "train: other seed": ("train", "good", ["seed=5"], ["trained with seed=0, this run has 5"]),
    "train: resume from a weights-only best checkpoint": ("train", "best", [],
                                                         ["holds model weights only", "resume from checkpoints/last.ckpt"]),
    "eval: missing": ("eval", "missing", [], ["missing.ckpt does not exist"]),
    "eval: truncated": ("eval", "truncated", [], ["truncated.ckpt cannot be read (truncated"]),
    "eval: other adapter shape": ("eval", "good", ["+override.adapter.rank=16"],
                                  ["trained with adapter.rank=8, this run has 16"]),
    "eval: tensors of another shape": ("eval", "reshaped", [], ["lora_A has shape (4,"]),
    "eval: other alpha": ("eval", "good", ["+override.adapter.alpha=8"], ["trained with adapter.alpha=32, this run has 8"]),
}


@pytest.mark.parametrize("case", list(CKPT_CASES))
def test_bad_checkpoint_fails_in_one_line(case, run_main, tiny, bad_checkpoints, tmp_path, encoder_cache, digest):
    tool, which, extra, fragments = CKPT_CASES[case]
    before = digest(bad_checkpoints["good"].parent)
    args = tiny() if tool == "train" else ["logger=none", "trainer.precision=32-true",
                                           f"paths.encoder_dir={encoder_cache}", f"paths.log_dir={tmp_path / 'out'}"]
    result = run_main(tool, *args, *extra, f"ckpt_path={bad_checkpoints[which]}", f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(result, *fragments)
    assert digest(bad_checkpoints["good"].parent) == before
    assert not (tmp_path / "run" / "checkpoints").exists()


# -------------------------------------------------------------------------------------------- predict

PREDICT_CASES = {
    "unknown title": (["history=[No Such Title]"], ["history: unknown title 'No Such Title'"]),
    "unknown id": (["history=[3,400]"], ["history: unknown item id 400 (valid 0..39)"]),
    "unknown candidate": (["history=[3,4]", "candidates=[1,-2]"], ["candidates: unknown item id -2"]),
    "empty history": (["history=[]"], ["history must be a non-empty list"]),
    "over-long history": ([f"history={list(range(11))}".replace(" ", "")], ["history has 11 items; at most 10"]),
}


@pytest.mark.parametrize("case", list(PREDICT_CASES))
def test_bad_predict_input_fails_in_one_line(case, run_main, trained_run, encoder_cache, tmp_path):
    extra, fragments = PREDICT_CASES[case]
    ckpt = trained_run / "checkpoints" / "last.ckpt"
    result = run_main("predict", f"ckpt_path={ckpt}", *extra, f"paths.encoder_dir={encoder_cache}",
                      f"hydra.run.dir={tmp_path / 'run'}")
    assert_clean_failure(result, *fragments)
    assert not (tmp_path / "run" / "predictions.json").exists()


# ------------------------------------------------------------------------------------- real processes


def test_real_processes_exit_2_with_one_line(cli, tiny, tiny_data_dir, trained_run, encoder_cache, tmp_path):
    """The console scripts themselves, three at once: ilora-train (bad data), ilora-eval (truncated checkpoint),
    ilora-predict (unknown title)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data_dir, data)
    _rewrite(data / "train.parquet", _replace_first("target", 99))
    good = trained_run / "checkpoints" / "last.ckpt"
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:1000])
    commands = {
        "train": (cli("train", *tiny(data), f"hydra.run.dir={tmp_path / 'train'}"),
                  "train.parquet: 1 target item ids outside 0..39"),
        "eval": (cli("eval", f"ckpt_path={truncated}", f"hydra.run.dir={tmp_path / 'eval'}"),
                 "truncated.ckpt cannot be read"),
        "predict": (cli("predict", f"ckpt_path={good}", "history=[Nothing Here]", f"paths.encoder_dir={encoder_cache}",
                        f"hydra.run.dir={tmp_path / 'pr'}"),
                    "unknown title 'Nothing Here'"),
    }
    procs = {name: subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, (cmd, _) in commands.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, err[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and commands[name][1] in lines[0], (name, err)
