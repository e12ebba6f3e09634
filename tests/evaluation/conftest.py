"""Shared fixtures: the tiny random backbone (real SmolLM2 tokenizer) and left/right-padded eval inputs."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

import pytest  # noqa: E402
import torch  # noqa: E402

from ilora.backbones import load_backbone  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny():
    """A tiny Llama whose weights are large enough (init std 0.2) that positions and masks change the scores."""
    return load_backbone("tiny_random", dtype="float32", seed=3, initializer_range=0.2)


def _left_pad(rows, pad_id):
    """Token lists -> left-padded ids and mask [B, T]."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):], mask[i, T - len(r):] = torch.tensor(r), 1
    return ids, mask


def _right_pad(groups, pad_id):
    """Per-row lists of candidate token lists -> right-padded ids and mask [B, C, L]."""
    L = max(len(s) for g in groups for s in g)
    ids = torch.full((len(groups), len(groups[0]), L), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, g in enumerate(groups):
        for c, s in enumerate(g):
            ids[b, c, :len(s)], mask[b, c, :len(s)] = torch.tensor(s), 1
    return ids, mask


@pytest.fixture
def pad():
    """(left_pad, right_pad) helpers for prompts [B, T] and candidate segments [B, C, L]."""
    return _left_pad, _right_pad
