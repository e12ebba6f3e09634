"""Fixtures writing tiny synthetic datasets to tmp_path (other test suites may use them too)."""

from __future__ import annotations

import os

import pytest

from ilora.data.datasets import load_dataset
from ilora.data.synthetic import make_tiny_dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")


@pytest.fixture
def make_dataset(tmp_path):
    """Factory: `make_dataset(name="tiny", **kw) -> path` of a fresh synthetic dataset under tmp_path."""

    def make(name: str = "tiny", **kw) -> str:
        return make_tiny_dataset(tmp_path / name, **kw)

    return make


@pytest.fixture
def tiny_dataset_dir(make_dataset) -> str:
    """A 30-item, 20-user synthetic dataset directory."""
    return make_dataset()


@pytest.fixture
def tiny_data(tiny_dataset_dir):
    """The loaded `RecData` of `tiny_dataset_dir`."""
    return load_dataset(tiny_dataset_dir)
