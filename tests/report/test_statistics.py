"""The intervals of `ilora.report.statistics` against textbook computations done here by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ilora.report.statistics import (
    INTERVALS,
    REPORTED,
    intervals,
    paired,
    seed_matrix,
    seed_t_ci,
    two_way_ci,
    two_way_components,
    user_table,
    users_ci,
)


def _table(rng, seeds=4, users=30):
    """per seed and user: a user effect, a seed shift (training noise) and their interaction"""
    return (0.3 + rng.normal(0, 0.3, size=(1, users)) + rng.normal(0, 0.1, size=(seeds, 1))
            + rng.normal(0, 0.4, size=(seeds, users)))


def test_the_seed_t_is_a_t_interval_over_the_per_seed_means():
    x = _table(np.random.default_rng(0))
    means = x.mean(1)
    assert seed_t_ci(x) == pytest.approx(stats.t.interval(0.95, 3, loc=means.mean(), scale=stats.sem(means)))
    with pytest.raises(ValueError, match="two seeds"):
        seed_t_ci(x[:1])


def test_the_two_way_interval_combines_the_anova_mean_squares():
    x = _table(np.random.default_rng(1))
    s, g = x.shape
    grand = x.mean()
    ms_seed = g * ((x.mean(1) - grand) ** 2).sum() / (s - 1)
    ms_user = s * ((x.mean(0) - grand) ** 2).sum() / (g - 1)
    resid = x - x.mean(1, keepdims=True) - x.mean(0, keepdims=True) + grand
    ms_resid = (resid ** 2).sum() / ((s - 1) * (g - 1))
    assert two_way_components(x, np.arange(g)) == pytest.approx((ms_seed, ms_user, ms_resid, s, g))
    assert ms_user > ms_resid  # the users differ
    half = math.sqrt((stats.t.ppf(0.975, s - 1) ** 2 * ms_seed
                      + stats.t.ppf(0.975, g - 1) ** 2 * (ms_user - ms_resid)) / (s * g))
    assert two_way_ci(x, np.arange(g)) == pytest.approx((grand - half, grand + half))
    # it counts training noise that the users interval holds fixed: a large per-seed shift widens it only
    shifted = x + np.array([[-0.3], [0.3], [-0.3], [0.3]])
    assert np.diff(two_way_ci(shifted, np.arange(g)))[0] > 2 * np.diff(two_way_ci(x, np.arange(g)))[0]
    assert np.diff(users_ci(shifted, np.arange(g)))[0] == pytest.approx(np.diff(users_ci(x, np.arange(g)))[0])


def test_users_with_several_windows_are_one_cluster():
    rng = np.random.default_rng(2)
    x = _table(rng, seeds=3, users=20)
    doubled = np.repeat(x, 2, axis=1)  # every user twice: the same information as once
    users = np.repeat(np.arange(20), 2)
    for name in ("users", "seed_t", "two_way"):
        assert INTERVALS[name].compute(doubled, users) == pytest.approx(INTERVALS[name].compute(x, np.arange(20)))
    # the linearised user table keeps each seed's mean over examples, whatever the windows per user
    ragged = np.repeat(np.arange(5), [1, 2, 3, 4, 5])
    values = rng.normal(size=(2, ragged.size))
    assert user_table(values, ragged).mean(1) == pytest.approx(values.mean(1))


def test_reported_intervals_follow_the_seed_count():
    x = _table(np.random.default_rng(3), seeds=3)
    assert set(intervals(x[:1], np.arange(30))) == {"users"}
    assert set(intervals(x[:2], np.arange(30))) == {"users"}  # coverage was measured at 1, 3 and 10 seeds
    found = intervals(x, np.arange(30))
    assert set(found) == set(REPORTED) and found["two_way"]["estimand"] == "population"


def test_paired_differences_pair_by_seed_on_the_examples_both_scored():
    rng = np.random.default_rng(4)
    a = {s: (np.arange(10), np.arange(10), rng.random(10)) for s in (0, 1, 2)}
    b = {s: (np.arange(2, 12), np.arange(2, 12), rng.random(10)) for s in (1, 2, 3)}
    found = paired(seed_matrix(a), seed_matrix(b))
    assert found.seeds == [1, 2] and found.num_examples == 8
    want = {str(s): float(a[s][2][2:].mean() - b[s][2][:8].mean()) for s in (1, 2)}
    assert found.per_seed == pytest.approx(want)
    assert found.mean == pytest.approx(np.mean(list(want.values())))
    # no shared seed: each side's seed average, and only the interval that holds the runs fixed
    unshared = paired(seed_matrix({0: a[0]}), seed_matrix({3: b[3]}))
    assert unshared.seeds == [] and set(unshared.intervals) == {"users"}
    assert paired(seed_matrix({0: a[0]}), seed_matrix({0: (np.arange(20, 25),) * 2 + (np.ones(5),)})) is None


def test_the_seeds_and_users_bootstrap_reduces_to_the_user_bootstrap_and_widens_with_training_noise():
    """(moved from test_metrics with the function: the study's dropped percentile interval, kept for the
    coverage measurement)"""
    from ilora.metrics import cluster_bootstrap_ci
    from ilora.report.statistics import seeds_users_ci

    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(60), 8)
    a, b = (rng.random((1, users.size)) < 0.3).astype(float), (rng.random((1, users.size)) < 0.25).astype(float)
    assert seeds_users_ci(a - b, users) == cluster_bootstrap_ci(a[0] - b[0], users)  # one run each
    # three runs of a that disagree (training noise): the interval must widen beyond the user-only one
    noisy = np.stack([(rng.random(users.size) < p).astype(float) for p in (0.15, 0.3, 0.45)])
    steady = np.stack([(rng.random(users.size) < 0.3).astype(float) for _ in range(3)])
    low, high = seeds_users_ci(noisy - steady, users)
    user_low, user_high = cluster_bootstrap_ci(noisy.mean(0) - steady.mean(0), users)
    assert high - low > 1.5 * (user_high - user_low)
    # identical runs: a constant difference has a zero-width interval at that constant
    same = np.tile((rng.random(users.size) < 0.5).astype(float), (3, 1))
    assert seeds_users_ci((same + 0.25) - same, users) == pytest.approx((0.25, 0.25))
    with pytest.raises(ValueError, match="same N"):
        seeds_users_ci((a - b)[:, :5], users)
