"""Ranking metrics over fixed candidate lists, shared by the encoders and the LLM evaluation.

Tie rule (pessimistic): the target's rank is 1 + the number of *other* candidates whose score is greater
than **or equal to** the target's. A model that scores every candidate alike therefore gets HR@1 = 0, never
a lucky 1/C; constant or saturated scores cannot look good. NaN scores of other candidates count as ties.

The metrics follow from that rank in closed form (one target per row): HR@k = [rank <= k],
NDCG@k = [rank <= k] / log2(rank + 1), MRR = 1 / rank. They agree with torchmetrics' retrieval functionals
(`retrieval_hit_rate`, `retrieval_normalized_dcg`, `retrieval_reciprocal_rank`; the tests check it) whenever
scores have no ties; they are computed from the rank because torchmetrics loops over queries in Python and
averages over ties (nDCG) or breaks them by argsort order (hit rate), which would favour the target.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor


def _check(scores: Tensor, target_index: Tensor) -> None:
    if scores.ndim != 2 or target_index.ndim != 1 or scores.shape[0] != target_index.shape[0]:
        raise ValueError(
            f"scores must be [N, C] and target_index [N], got {tuple(scores.shape)} and {tuple(target_index.shape)}"
        )
    if scores.shape[0] and (target_index.min() < 0 or target_index.max() >= scores.shape[1]):
        raise ValueError(f"target_index must lie in 0..{scores.shape[1] - 1}")


def target_rank(scores: Tensor, target_index: Tensor) -> Tensor:
    """1-based pessimistic rank of the target: `scores [N, C]`, `target_index [N]` -> `[N]` long."""
    scores, target_index = torch.as_tensor(scores), torch.as_tensor(target_index, dtype=torch.long)
    _check(scores, target_index)
    scores = scores.float()
    target_score = scores.gather(1, target_index[:, None])  # [N, 1]
    beats = ~(scores < target_score)  # >= and NaN: not strictly below the target counts against it
    beats.scatter_(1, target_index[:, None], False)  # the target does not beat itself
    return beats.sum(1) + 1


def per_example_hits(scores: Tensor, target_index: Tensor, k: int) -> Tensor:
    """Per-row HR@k as float `[N]` (1.0 when the target ranks within the top k), for bootstrap intervals."""
    return (target_rank(scores, target_index) <= k).float()


def ranking_metrics(scores: Tensor, target_index: Tensor, ks: Iterable[int] = (1, 5, 10)) -> dict[str, float]:
    """Mean `hr@k`, `ndcg@k` for each k, and `mrr` over the N rows of `scores [N, C]` (target column `[N]`)."""
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")
    rank = target_rank(scores, target_index).double()
    if rank.numel() == 0:
        raise ValueError("ranking_metrics needs at least one row")
    out: dict[str, float] = {}
    gain = 1.0 / torch.log2(rank + 1.0)
    for k in ks:
        hit = rank <= k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, gain, 0.0).mean().item()
    out["mrr"] = (1.0 / rank).mean().item()
    return out


def bootstrap_ci(
    values: Tensor | np.ndarray, num_samples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval `(low, high)` of the mean of per-example `values [N]` (resampling examples)."""
    x = np.asarray(torch.as_tensor(values).double().cpu().numpy() if isinstance(values, Tensor) else values, float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"bootstrap_ci needs a non-empty 1-D array, got shape {x.shape}")
    if not 0.0 < alpha < 1.0 or num_samples < 1:
        raise ValueError(f"need 0 < alpha < 1 and num_samples >= 1, got alpha={alpha}, num_samples={num_samples}")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(num_samples, x.size))].mean(axis=1)  # [S]
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def cluster_bootstrap_ci(
    values: Tensor | np.ndarray, clusters: Tensor | np.ndarray | None, num_samples: int = 1000, alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile interval of the mean of `values [N]`, resampling whole clusters (users with all their windows).

    Each bootstrap sample draws as many users as there are, with replacement, and takes the mean over all the
    rows of the drawn users (a user drawn twice counts twice). With one row per user this is the ordinary
    example bootstrap. `clusters` None: every row is its own cluster.
    """
    x = np.asarray(torch.as_tensor(values).double().cpu().numpy() if isinstance(values, Tensor) else values, float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"cluster_bootstrap_ci needs a non-empty 1-D array, got shape {x.shape}")
    if not 0.0 < alpha < 1.0 or num_samples < 1:
        raise ValueError(f"need 0 < alpha < 1 and num_samples >= 1, got alpha={alpha}, num_samples={num_samples}")
    groups = np.arange(x.size) if clusters is None else np.asarray(
        torch.as_tensor(clusters).cpu().numpy() if isinstance(clusters, Tensor) else clusters)
    if groups.shape != x.shape:
        raise ValueError(f"clusters {groups.shape} must match values {x.shape}")
    _, member = np.unique(groups, return_inverse=True)
    sums = np.bincount(member, weights=x)
    counts = np.bincount(member).astype(float)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, sums.size, size=(num_samples, sums.size))  # [S, G]
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)
