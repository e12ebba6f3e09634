"""Candidate sampling: target present once, negatives never seen, determinism and its keys."""

from __future__ import annotations

import numpy as np
import pytest

from ilora.data.candidates import eval_candidates, target_index, train_candidates
from ilora.data.datasets import Split
from ilora.errors import ConfigError


def _split(n=200, num_items=500, seed=1):
    rng = np.random.default_rng(seed)
    history = [rng.choice(num_items, size=int(k), replace=False).tolist() for k in rng.integers(0, 11, size=n)]
    target = np.array([next(i for i in rng.permutation(num_items) if i not in h) for h in history], dtype=np.int64)
    return Split(name="test", history=history, target=target, user=None)


def _assert_valid(cands, history, target, num_items):
    assert len(set(cands.tolist())) == len(cands)
    assert (cands == target).sum() == 1
    assert not set(cands.tolist()) & set(history)
    assert cands.min() >= 0 and cands.max() < num_items


def test_eval_candidates_valid_and_fixed():
    split = _split()
    cands = eval_candidates(split, 500, 20, seed=3)
    assert cands.shape == (200, 20) and cands.dtype == np.int64
    for row, h, t in zip(cands, split.history, split.target):
        _assert_valid(row, h, t, 500)
    assert np.array_equal(cands, eval_candidates(split, 500, 20, seed=3))
    assert not np.array_equal(cands, eval_candidates(split, 500, 20, seed=4))
    # row i does not depend on the other rows: a prefix of the split gives the same rows
    prefix = Split("test", split.history[:50], split.target[:50], None)
    assert np.array_equal(eval_candidates(prefix, 500, 20, seed=3), cands[:50])
    idx = target_index(cands, split.target)
    assert np.array_equal(cands[np.arange(200), idx], split.target)
    assert len(np.unique(idx)) > 10  # the target position is drawn, not fixed


def test_eval_candidates_do_not_move_when_the_split_changes():
    """Dropping the longest histories, reversing the rows and appending a long one keep every other row's list."""
    split = _split()
    cands = eval_candidates(split, 500, 20, seed=3)
    longest = max(map(len, split.history))
    keep = [i for i, h in enumerate(split.history) if len(h) < longest][::-1]
    edited = Split("test", [split.history[i] for i in keep] + [list(range(100, 140))],
                   np.concatenate([split.target[keep], [7]]), None)
    moved = eval_candidates(edited, 500, 20, seed=3)
    assert np.array_equal(moved[:-1], cands[keep])
    _assert_valid(moved[-1], list(range(100, 140)), 7, 500)


def test_eval_candidates_tiny_catalogue_uses_fallback():
    split = _split(n=30, num_items=25)
    cands = eval_candidates(split, 25, 14, seed=0)
    for row, h, t in zip(cands, split.history, split.target):
        _assert_valid(row, h, t, 25)


def test_train_candidates_deterministic_per_key():
    hist, tgt = [1, 2, 3, 4], 9
    a = train_candidates(hist, tgt, 1000, 20, seed=0, epoch=0, index=5)
    _assert_valid(a, hist, tgt, 1000)
    assert np.array_equal(a, train_candidates(hist, tgt, 1000, 20, seed=0, epoch=0, index=5))
    for kw in ({"seed": 1, "epoch": 0, "index": 5}, {"seed": 0, "epoch": 1, "index": 5},
               {"seed": 0, "epoch": 0, "index": 6}):
        assert not np.array_equal(a, train_candidates(hist, tgt, 1000, 20, **kw))
    # exhausting the catalogue works (permutation path) and C=1 is just the target
    full = train_candidates(hist, tgt, 25, 21, seed=0, epoch=0, index=0)
    _assert_valid(full, hist, tgt, 25)
    assert train_candidates(hist, tgt, 25, 1, seed=0, epoch=0, index=0).tolist() == [9]


def test_candidate_count_errors():
    with pytest.raises(ConfigError, match="num_candidates=0 must be >= 1"):
        train_candidates([1], 2, 10, 0, seed=0, epoch=0, index=0)
    with pytest.raises(ConfigError, match="num_candidates=10 needs 9 negatives but only 8"):
        train_candidates([1], 2, 10, 10, seed=0, epoch=0, index=0)
    split = Split("val", [list(range(10))], np.array([10]), None)
    with pytest.raises(ConfigError, match="only 1 of 12 items .* val example 0"):
        eval_candidates(split, 12, 3)
