"""Seeded candidate lists: the target plus negatives the user has neither seen nor is about to see.

Evaluation candidates are a pure function of (seed, history, target), so every method and every run
ranks exactly the same 20 titles, and editing a split leaves the other rows' lists where they were. Training candidates add the epoch, so each epoch sees
fresh negatives while a resumed run reproduces the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ilora.data.datasets import Split
from ilora.errors import ConfigError

_EVAL_STREAM = 0  # keeps eval draws apart from any other use of the same seed


def check_num_candidates(num_candidates: int, num_items: int, forbidden: int, where: str = "") -> None:
    """ConfigError unless 1 <= num_candidates and the catalogue holds num_candidates-1 allowed negatives."""
    if num_candidates < 1:
        raise ConfigError(f"data.num_candidates={num_candidates} must be >= 1")
    available = num_items - forbidden
    if num_candidates - 1 > available:
        raise ConfigError(
            f"data.num_candidates={num_candidates} needs {num_candidates - 1} negatives but only {available} of "
            f"{num_items} items are outside the history and target{where}; lower data.num_candidates"
        )


def _negatives(rng: np.random.Generator, forbidden: set[int], num_items: int, k: int) -> np.ndarray:
    """k distinct items outside `forbidden`: rejection sampling when the catalogue is roomy, else a permutation."""
    if k == 0:
        return np.empty(0, dtype=np.int64)
    if num_items - len(forbidden) < 4 * k:
        allowed = np.setdiff1d(np.arange(num_items), np.fromiter(forbidden, dtype=np.int64))
        return rng.permutation(allowed)[:k].astype(np.int64)
    picked: list[int] = []
    seen = set(forbidden)
    while len(picked) < k:
        for item in rng.integers(0, num_items, size=2 * k).tolist():
            if item not in seen:
                seen.add(item)
                picked.append(item)
                if len(picked) == k:
                    break
    return np.asarray(picked, dtype=np.int64)


def train_candidates(
    history: Sequence[int], target: int, num_items: int, num_candidates: int, *, seed: int, epoch: int, index: int
) -> np.ndarray:
    """Candidates `[C]` for one training example, deterministic in (seed, epoch, index); target at a random column."""
    forbidden = set(map(int, history)) | {int(target)}
    check_num_candidates(num_candidates, num_items, len(forbidden), f" for example {index}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, index]))
    negatives = _negatives(rng, forbidden, num_items, num_candidates - 1)
    position = int(rng.integers(num_candidates))
    return np.insert(negatives, position, int(target))


def eval_candidates(split: Split, num_items: int, num_candidates: int = 20, seed: int = 0) -> np.ndarray:
    """Fixed candidates `[N, C]` for a val/test split; row i depends only on (seed, history_i, target_i).

    Each row draws from its own generator keyed by its content, not by its position or by any other row,
    so adding, removing or reordering rows of a split never moves the candidates of the rows that stay.
    """
    n = len(split.target)
    c = num_candidates
    if n == 0:
        return np.empty((0, c), dtype=np.int64)
    forbidden = [set(map(int, h)) | {int(t)} for h, t in zip(split.history, split.target.tolist())]
    worst = max(range(n), key=lambda i: len(forbidden[i]))
    check_num_candidates(c, num_items, len(forbidden[worst]), f" for {split.name} example {worst}")
    out = np.empty((n, c), dtype=np.int64)
    for i, (history, target) in enumerate(zip(split.history, split.target.tolist())):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _EVAL_STREAM, int(target), *map(int, history)]))
        negatives = _negatives(rng, forbidden[i], num_items, c - 1)
        out[i] = np.insert(negatives, int(rng.integers(c)), int(target))
    return out


def target_index(candidates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Column of the target in each candidate row: `[N, C]`, `[N]` -> `[N]` int64."""
    return np.argmax(candidates == np.asarray(target)[:, None], axis=1).astype(np.int64)
