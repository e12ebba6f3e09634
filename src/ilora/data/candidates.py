"""Seeded candidate lists: the target plus negatives the user has neither seen nor is about to see.

Evaluation candidates are a pure function of (seed, example index, history, target), so every method
and every run ranks exactly the same 20 titles. Training candidates add the epoch, so each epoch sees
fresh negatives while a resumed run reproduces the same ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ilora.data.datasets import Split, pad_histories
from ilora.errors import ConfigError

_EVAL_STREAM = 0  # keeps eval draws apart from any other use of the same seed
_FALLBACK_STREAM = 1


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
    """Fixed candidates `[N, C]` for a val/test split; row i depends only on (seed, i, history_i, target_i).

    Vectorised: one uniform matrix `[N, 1 + M]` (row i is the i-th block of the seeded stream, so it does not
    depend on N); column 0 places the target, the rest are draws kept in order when allowed and not repeated.
    Rows left short (tiny catalogues) fall back to a per-row permutation seeded by (seed, i).
    """
    n = len(split.target)
    c = num_candidates
    if n == 0:
        return np.empty((0, c), dtype=np.int64)
    window = max(1, max(map(len, split.history), default=0))
    hist, _ = pad_histories(split.history, -1, window)
    forbidden_matrix = np.concatenate([hist, split.target[:, None]], axis=1)  # [N, W+1], -1 = empty
    ordered = np.sort(forbidden_matrix, axis=1)
    distinct = (ordered >= 0).sum(1) - ((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).sum(1)
    worst = int(np.argmax(distinct))
    check_num_candidates(c, num_items, int(distinct[worst]), f" for {split.name} example {worst}")

    m = 2 * c + window + 1  # draws per row: enough for nearly every row on real catalogues
    rng = np.random.default_rng(np.random.SeedSequence([seed, _EVAL_STREAM]))
    u = rng.random((n, 1 + m))
    position = np.minimum((u[:, 0] * c).astype(np.int64), c - 1)
    draws = np.minimum((u[:, 1:] * num_items).astype(np.int64), num_items - 1)  # [N, M]
    allowed = ~(draws[:, :, None] == forbidden_matrix[:, None, :]).any(-1)
    order = np.argsort(draws, axis=1, kind="stable")
    sorted_draws = np.take_along_axis(draws, order, axis=1)
    repeat_sorted = np.zeros_like(allowed)
    repeat_sorted[:, 1:] = sorted_draws[:, 1:] == sorted_draws[:, :-1]
    repeat = np.empty_like(repeat_sorted)
    np.put_along_axis(repeat, order, repeat_sorted, axis=1)  # later copies of a value are repeats
    keep = allowed & ~repeat
    keep &= np.cumsum(keep, axis=1) <= c - 1

    negatives = np.empty((n, c - 1), dtype=np.int64)
    full = keep.sum(1) == c - 1
    negatives[full] = draws[full][keep[full]].reshape(-1, c - 1)
    for i in np.flatnonzero(~full).tolist():
        row_rng = np.random.default_rng(np.random.SeedSequence([seed, _FALLBACK_STREAM, i]))
        forbidden = set(split.history[i]) | {int(split.target[i])}
        negatives[i] = _negatives(row_rng, forbidden, num_items, c - 1)

    out = np.empty((n, c), dtype=np.int64)
    is_target = np.arange(c)[None, :] == position[:, None]
    out[is_target] = split.target
    out[~is_target] = negatives.reshape(-1)
    return out


def target_index(candidates: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Column of the target in each candidate row: `[N, C]`, `[N]` -> `[N]` int64."""
    return np.argmax(candidates == np.asarray(target)[:, None], axis=1).astype(np.int64)
