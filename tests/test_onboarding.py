"""data/README.md's walkthrough, run as written: a raw log with string ids, own column names, a TSV catalogue and a
new prompt domain goes through build, check, encoder training, a tiny ilora-train, predict and export, with no code.

Each command of the walkthrough's bash block runs as a subprocess from a scratch working directory holding the
generated `logs/` (`ilora.data.synthetic.write_raw_log`), plus the flags in ADDED (tiny backbone, scratch paths)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ilora.data.datasets import load_dataset
from ilora.data.synthetic import write_raw_log

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("ILORA_TEST_CACHE", REPO / ".cache"))


def walkthrough() -> tuple[str, list[str]]:
    text = (REPO / "data" / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Your own logs"):]
    section = section[:section.index("\n## ", 1)]
    (block,) = re.findall(r"```bash\n(.*?)```", section, flags=re.S)
    return section, [line.strip() for line in block.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("onboarding")
    generated = write_raw_log(root / "logs")
    (root / "cache").mkdir()
    os.symlink(CACHE / "backbones", root / "cache" / "backbones")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "ILORA_CACHE": str(root / "cache")}
    return root, env, generated


def test_the_documented_yaml_files_are_the_ones_the_walkthrough_uses(workspace):
    root, _, _ = workspace
    section, _ = walkthrough()
    yaml_blocks = re.findall(r"```yaml\n(.*?)```", section, flags=re.S)
    assert yaml_blocks == [(root / "logs" / "columns.yaml").read_text(), (root / "logs" / "podcast.yaml").read_text()]


def test_raw_log_to_prediction_and_export_with_configuration_only(workspace):
    root, env, generated = workspace
    scratch = [f"paths.data_dir={root / 'data'}", f"paths.log_dir={root / 'outputs'}"]
    tiny = ["backbone=tiny_random", f"backbone.cache_dir={CACHE}/backbones/smollm2_135m", "logger=csv",
            "trainer.precision=32-true", "trainer.max_steps=2", "trainer.limit_train_batches=4",
            "trainer.accumulate_grad_batches=1", "data.batch_size=2", "data.eval_batch_size=8",
            "data.limit_val_examples=4", "data.limit_test_examples=8", "model.evaluation.max_new_tokens=8",
            "encoder.train.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=1"]
    added = {"ilora-data": [], "ilora-train-encoder": [*scratch, "encoder.train.max_epochs=2"],
             "ilora-train": [*scratch, *tiny], "ilora-predict": scratch, "ilora-export": scratch}
    _, commands = walkthrough()
    assert [c.split()[0] for c in commands] == ["ilora-data", "ilora-data", "ilora-train-encoder", "ilora-train",
                                                "ilora-predict", "ilora-export"]
    ckpt = None
    outputs = {}
    for command in commands:
        if "PATH" in command:
            command = command.replace("PATH", str(ckpt))
        tool, *args = shlex.split(command)
        result = subprocess.run([str(BIN / tool), *args, *added[tool]], cwd=root, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        outputs[tool + (" " + args[0] if tool == "ilora-data" else "")] = result.stdout
        if tool == "ilora-train":
            (ckpt,) = (root / "outputs").glob("train/runs/*/checkpoints/last.ckpt")

    # build: the rules were applied and counted; string ids became dense ids with the maps shipped
    built = outputs["ilora-data build"]
    assert "duplicate_events_dropped:" in built and "events_on_items_without_title: 2" in built
    data = load_dataset(root / "data" / "mypods")
    assert data.domain == "podcast" and data.titles == generated["titles"]
    item_map = pq.read_table(root / "data" / "mypods" / "item_map.parquet").to_pandas()
    catalogue = (root / "logs" / "episodes.tsv").read_text().splitlines()[1:]
    assert item_map["original_id"].tolist() == [line.split("\t")[0] for line in catalogue]
    assert "ok (mypods, podcast, 60 items" in outputs["ilora-data check"]
    assert (root / "cache" / "encoders" / "mypods" / "sasrec" / "seed0" / "encoder.safetensors").is_file()

    # train used the new domain's prompts (the first template, rendered with the 20 candidates)
    run_dir = ckpt.parent.parent
    config = (run_dir / "config.yaml").read_text()
    assert str(root / "logs" / "podcast.yaml") in config  # stored absolute
    record = json.loads((run_dir / "predictions_test.jsonl").read_text().splitlines()[0])
    assert len(record["candidates"]) == 20

    # predict: the history resolved to the intended items; the log's own ids printed beside the dense ones
    (saved,) = (root / "outputs").glob("predict/runs/*/predictions.json")
    prediction = json.loads(saved.read_text())
    assert [data.titles[i] for i in prediction["history"]] == ["Episode 3: Dusty Falcon", "Episode 7: Hidden Falcon"]
    top = prediction["ranked"][0]
    assert top["original_id"] == item_map["original_id"][top["item_id"]]
    assert f"({top['original_id']})" in outputs["ilora-predict"]

    # export: a peft adapter that reproduced our logits on reload
    exported = json.loads((root / "exports" / "mypods" / "ilora_export.json").read_text())
    assert exported["verify_max_abs_logit_difference"] < 1e-5 and exported["prompts"]["domain"] == "podcast"
