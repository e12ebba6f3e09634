"""Tiny encoders and datasets for the encoder tests (CPU, one thread, fixed seeds)."""

from __future__ import annotations

import os

import pytest
import torch

from ilora.data.synthetic import make_tiny_dataset
from ilora.encoders import build_encoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

NAMES = ("sasrec", "gru4rec", "caser")
NUM_ITEMS = 30
HIDDEN = 16


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(params=NAMES)
def encoder(request):
    """Each encoder type, tiny, in eval mode (dropout off)."""
    return build_encoder(request.param, NUM_ITEMS, hidden_dim=HIDDEN).eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    """A 30-item, 40-user synthetic dataset (shared by the training tests; read-only)."""
    return make_tiny_dataset(tmp_path_factory.mktemp("encdata") / "tiny", num_items=NUM_ITEMS, num_users=40, seed=0)


@pytest.fixture
def random_history():
    """Factory: `random_history(B, W, min_len=0)` -> right-padded histories `[B, W]` and lengths `[B]`."""

    def make(batch: int, window: int, min_len: int = 0):
        lengths = torch.randint(min_len, window + 1, (batch,))
        history = torch.randint(0, NUM_ITEMS, (batch, window))
        history[torch.arange(window)[None, :] >= lengths[:, None]] = NUM_ITEMS
        return history, lengths

    return make
