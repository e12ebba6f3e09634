"""Ranking metrics on hand-checked cases, the pessimistic tie rule, torchmetrics parity, bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchmetrics.functional.retrieval import (
    retrieval_hit_rate,
    retrieval_normalized_dcg,
    retrieval_reciprocal_rank,
)

from ilora.metrics import bootstrap_ci, per_example_hits, ranking_metrics, target_rank


def test_hand_checked_ranks_and_metrics():
    scores = torch.tensor([[0.1, 0.9, 0.3, 0.2], [0.1, 0.9, 0.3, 0.2], [5.0, 1.0, 2.0, 3.0]])
    column = torch.tensor([1, 2, 1])  # ranks 1, 2 and 4
    assert target_rank(scores, column).tolist() == [1, 2, 4]
    m = ranking_metrics(scores, column, ks=(1, 3))
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@3"] == pytest.approx(2 / 3)
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 4) / 3)
    assert set(m) == {"hr@1", "ndcg@1", "hr@3", "ndcg@3", "mrr"}


def test_ties_never_favour_the_target():
    flat = torch.zeros(2, 20)
    assert target_rank(flat, torch.tensor([0, 19])).tolist() == [20, 20]
    assert ranking_metrics(flat, torch.tensor([0, 19]))["hr@1"] == 0.0
    tie_at_top = torch.tensor([[3.0, 3.0, 1.0]])
    assert target_rank(tie_at_top, torch.tensor([0])).item() == 2
    assert target_rank(tie_at_top, torch.tensor([1])).item() == 2


def test_nan_target_score_ranks_last():
    scores = torch.tensor([[float("nan"), 0.5, 0.1]])
    assert target_rank(scores, torch.tensor([0])).item() == 3


def test_per_example_hits():
    scores = torch.tensor([[0.9, 0.1, 0.5], [0.1, 0.9, 0.5]])
    assert per_example_hits(scores, torch.tensor([0, 0]), k=1).tolist() == [1.0, 0.0]
    assert per_example_hits(scores, torch.tensor([0, 0]), k=3).tolist() == [1.0, 1.0]


def test_agrees_with_torchmetrics_without_ties():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 20, generator=g)
    column = torch.randint(0, 20, (50,), generator=g)
    relevant = torch.nn.functional.one_hot(column, 20).bool()
    m = ranking_metrics(scores, column, ks=(1, 5, 10))
    for k in (1, 5, 10):
        hr = torch.stack([retrieval_hit_rate(s, t, top_k=k) for s, t in zip(scores, relevant)]).mean()
        ndcg = torch.stack([retrieval_normalized_dcg(s, t, top_k=k) for s, t in zip(scores, relevant)]).mean()
        assert m[f"hr@{k}"] == pytest.approx(hr.item(), abs=1e-6)
        assert m[f"ndcg@{k}"] == pytest.approx(ndcg.item(), abs=1e-6)
    mrr = torch.stack([retrieval_reciprocal_rank(s, t) for s, t in zip(scores, relevant)]).mean()
    assert m["mrr"] == pytest.approx(mrr.item(), abs=1e-6)


@pytest.mark.parametrize(
    ("scores", "column"),
    [(torch.zeros(3), torch.zeros(3, dtype=torch.long)), (torch.zeros(2, 3), torch.tensor([0, 3]))],
)
def test_bad_shapes_or_columns_raise(scores, column):
    with pytest.raises(ValueError):
        ranking_metrics(scores, column)


def test_bootstrap_ci_constant_and_binary():
    assert bootstrap_ci(np.full(30, 0.25)) == pytest.approx((0.25, 0.25))
    values = np.r_[np.ones(200), np.zeros(200)]
    low, high = bootstrap_ci(values, num_samples=2000, seed=1)
    assert low < 0.5 < high
    assert high - low == pytest.approx(2 * 1.96 * 0.025, rel=0.15)  # normal approximation, se = 0.025
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(torch.tensor(values), seed=3)  # seeded, any input type
    narrow = bootstrap_ci(np.tile(values, 4), seed=1)
    assert narrow[1] - narrow[0] < high - low


def test_bootstrap_ci_rejects_bad_input():
    with pytest.raises(ValueError):
        bootstrap_ci(np.array([]))
    with pytest.raises(ValueError):
        bootstrap_ci(np.ones(3), alpha=1.5)


def test_cluster_bootstrap_resamples_whole_users():
    from ilora.metrics import cluster_bootstrap_ci

    rng = np.random.default_rng(0)
    per_user = rng.random(40)
    # one row per user: exactly the example bootstrap (same draws)
    assert cluster_bootstrap_ci(per_user, np.arange(40)) == pytest.approx(bootstrap_ci(per_user))
    # five identical windows per user carry no more information than one: same interval, not a narrower one
    windows, users = np.repeat(per_user, 5), np.repeat(np.arange(40), 5)
    assert cluster_bootstrap_ci(windows, users) == pytest.approx(bootstrap_ci(per_user))
    naive = bootstrap_ci(windows)
    assert naive[1] - naive[0] < 0.6 * (bootstrap_ci(per_user)[1] - bootstrap_ci(per_user)[0])
    # users with more windows weigh more: the mean is over windows
    low, high = cluster_bootstrap_ci(np.array([1.0, 1.0, 1.0, 0.0]), np.array([0, 0, 0, 1]), num_samples=2000)
    assert low == 0.0 and high == 1.0
    with pytest.raises(ValueError, match="must match"):
        cluster_bootstrap_ci(np.ones(3), np.arange(2))

