"""`pip install .` (not editable) works from any folder: the configs ship in the wheel (`pkg://ilora.conf`), a user's
own config folder composes with them, and datasets are found through data.dir or ILORA_DATA (issue 25)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("ILORA_TEST_CACHE", REPO / ".cache"))
TINY = ["backbone=tiny_random", f"backbone.cache_dir={CACHE}/backbones/smollm2_135m", "logger=none",
        "trainer.precision=32-true", "trainer.max_steps=2", "trainer.limit_train_batches=4",
        "trainer.val_check_interval=2", "data.limit_val_examples=4", "data.limit_test_examples=4",
        "encoder.train.max_epochs=1"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from this checkout, installed without its dependencies (this venv has them) elsewhere."""
    import shutil

    root = tmp_path_factory.mktemp("installed")
    source = root / "source"  # a copy: setuptools writes build/ and *.egg-info beside the sources it builds
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copyfile(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(source),
                    "-w", str(root / "dist")], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("ilora-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(root / "site"),
                    str(wheel)], check=True, capture_output=True)
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("ILORA_ROOT", "ILORA_DATA")}
    env.update(PYTHONPATH=str(root / "site"), ILORA_CACHE=str(root / "cache"), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    return root, elsewhere, env


def _train(installed, *args, env=None):
    _, elsewhere, base = installed
    return subprocess.run([sys.executable, "-m", "ilora.cli.train", *args], cwd=elsewhere, env={**base, **(env or {})},
                          capture_output=True, text=True, timeout=900)


def test_the_wheel_carries_the_configs_and_is_what_runs(installed):
    root, elsewhere, env = installed
    where = subprocess.run([sys.executable, "-c", "import ilora.cli as c; print(c.__file__); print(c.CONFIG_DIR)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(root / "site") for p in where)  # not this checkout's src/
    shown = _train(installed, "--cfg", "job")
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "backbone:" in shown.stdout and "kind: smollm2_135m" in shown.stdout


def test_no_dataset_found_is_one_line_naming_both_ways_to_point_at_it(installed):
    result = _train(installed, *TINY)
    assert result.returncode == 2
    (line,) = [s for s in result.stderr.splitlines() if s.startswith("error:")]
    assert "dataset directory not found" in line and "data.dir=" in line and "ILORA_DATA" in line


def test_a_tiny_training_from_outside_the_repository_with_a_users_config_folder(installed, tmp_path):
    user_conf = tmp_path / "my_conf"
    (user_conf / "experiment").mkdir(parents=True)
    (user_conf / "experiment" / "mine.yaml").write_text(
        "# @package _global_\ntags: [mine]\nadapter:\n  num_experts: 2\n")
    run_dir = tmp_path / "run"
    result = _train(installed, "--config-dir", str(user_conf), "experiment=mine", *TINY, f"hydra.run.dir={run_dir}",
                    env={"ILORA_DATA": str(REPO / "data")})
    assert result.returncode == 0, result.stderr[-3000:]
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["tags"] == ["mine"] and config["adapter"]["num_experts"] == 2
    assert config["data"]["dir"] == str(REPO / "data" / "movielens")
    assert (run_dir / "status.json").read_text().count("completed") == 1
