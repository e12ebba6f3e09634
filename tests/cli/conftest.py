"""Compose the real Hydra configs, forced to CPU, a tiny random backbone, a tiny dataset and tmp_path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from ilora.cli import CONFIG_DIR
from ilora.data.synthetic import make_tiny_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

# The SmolLM2 tokenizer copy is shared by all tests (it is cached once, like a user's cache dir).
SHARED_CACHE = Path(os.environ.get("ILORA_TEST_CACHE", Path(__file__).resolve().parents[2] / ".cache"))

# Overrides every tiny run shares; TINY adds the step budget the in-process tests use.
TINY_BASE = [
    "backbone=tiny_random",
    f"backbone.cache_dir={SHARED_CACHE}/backbones/smollm2_135m",
    "logger=csv",
    "trainer.precision=32-true",
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "data.batch_size=4",
    "data.eval_batch_size=4",
    "trainer.accumulate_grad_batches=1",
    "data.num_candidates=5",
    "data.limit_val_examples=4",
    "data.limit_test_examples=6",
    "encoder.hidden_dim=16",
    "encoder.train.max_epochs=2",
    "encoder.train.batch_size=64",
]
TINY = [
    *TINY_BASE,
    "trainer.max_steps=4",
    "trainer.limit_train_batches=4",
    "model.evaluation.max_new_tokens=8",
    "callbacks.last_checkpoint.every_n_train_steps=2",
]


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("data") / "tiny"
    make_tiny_dataset(directory, num_items=40, num_users=60, seed=0)
    return directory


@pytest.fixture(scope="session")
def encoder_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One encoder cache per session: the tiny SASRec is trained once and reused by every test."""
    return tmp_path_factory.mktemp("encoders")


def compose_config(name: str, overrides: list[str], out_dir: Path) -> DictConfig:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=name, return_hydra_config=True, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out_dir)
        cfg.paths.log_dir = str(out_dir.parent / "logs")
        cfg.hydra.runtime.output_dir = str(out_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    GlobalHydra.instance().clear()
    return cfg


def wandb_history_keys(run_file: Path) -> set[str]:
    """Keys logged to history in an offline `.wandb` file (a LevelDB-style log of protobuf `Record`s)."""
    keys: set[str] = set()
    for record in wandb_records(run_file):
        if record.WhichOneof("record_type") == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
    return keys


def wandb_run_record(run_file: Path):
    """The run record (group, tags, name, ...) of an offline `.wandb` file."""
    return next(r.run for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run")


def wandb_records(run_file: Path) -> list:
    """The protobuf `Record`s of an offline `.wandb` file."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, block, pos = run_file.read_bytes(), 32768, 7  # 7-byte file header ':W&B' + magic + version
    records, chunk = [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if length == 0 and kind == 0:  # block padding
            pos += room - 7
            continue
        chunk += data[pos : pos + length]
        pos += length
        if kind in (1, 4):  # FULL or LAST fragment
            records.append(chunk)
            chunk = b""
    parsed = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


@pytest.fixture(scope="session")
def wandb_keys():
    return wandb_history_keys


@pytest.fixture(scope="session")
def wandb_run_record_of():
    return wandb_run_record


@pytest.fixture(scope="session")
def tiny_base() -> list[str]:
    return list(TINY_BASE)


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    return SHARED_CACHE


@pytest.fixture
def compose_cfg(encoder_cache):
    """`compose(name, overrides, out_dir) -> cfg` with HydraConfig set, as a running CLI would have it.

    eval/predict read the session's encoder cache (where the tiny runs trained theirs), never the repository's
    `.cache/encoders`, whose copy may come from another recipe and would silently change every score.
    """

    def make(name: str, overrides: list[str], out_dir: Path) -> DictConfig:
        if name in ("eval", "predict") and not any(o.startswith("paths.encoder_dir=") for o in overrides):
            overrides = [*overrides, f"paths.encoder_dir={encoder_cache}"]
        return compose_config(name, overrides, out_dir)

    return make


@pytest.fixture
def train_cfg(tmp_path: Path, tiny_data_dir: Path, encoder_cache: Path):
    """Factory: a composed tiny train config writing into tmp_path/<run>."""

    def make(*extra: str, run: str = "run") -> DictConfig:
        overrides = [*TINY, f"data.dir={tiny_data_dir}", "data.name=tiny", f"paths.encoder_dir={encoder_cache}", *extra]
        return compose_config("train", overrides, tmp_path / run)

    return make
