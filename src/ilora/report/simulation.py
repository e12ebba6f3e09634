"""Simulated studies fitted to recorded runs, to measure how often each interval covers its estimand.

The model is a threshold (probit) model of each per-example hit: run s of method m hits test example j of user i
when

    mu_m + u_i + x_ij + v_mij + c_ms + e_msij > 0

with user difficulty u (shared by every run and every window of the user), example difficulty x (shared by every
run), a method-specific example effect v (shared by the seeds of one method: what that method finds easy), a
per-run shift c (training noise that moves a whole run), and per-example noise e (what two seeds of one method
disagree on). The variances add to 1, so P(hit) = Phi(mu_m). They are fitted to recorded runs by matching the hit
rates, the agreement of two seeds of one method and of two methods on the same example, the agreement of two
windows of one user within a run, and the spread of run means between seeds (`fit`).

Because every term is Gaussian, each estimand has a closed form for a simulated study, so coverage is counted
against the truth, not against another estimate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ilora.report.statistics import INTERVALS


@dataclass(frozen=True)
class StudyModel:
    p: tuple[float, float]  # marginal hit rates of methods a and b
    user: float  # latent variance of u
    example: float  # of x
    method: float  # of v
    run: float  # of c
    windows: tuple[int, ...]  # test examples per user

    @property
    def residual(self) -> float:
        return 1.0 - self.user - self.example - self.method - self.run

    def as_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = {"users": len(self.windows), "examples": int(sum(self.windows))}
        return d


def _phi2(mu_a: float, mu_b: float, r: float) -> float:
    """P(Z_a > -mu_a, Z_b > -mu_b) for standard normals with correlation r: both hit."""
    from scipy.stats import multivariate_normal

    r = min(max(r, -0.999), 0.999)
    return float(multivariate_normal(mean=[0.0, 0.0], cov=[[1.0, r], [r, 1.0]]).cdf([mu_a, mu_b]))


def _solve(f, target: float, low: float = 0.0, high: float = 0.98) -> float:
    """The r in [low, high] with f(r) = target for an increasing f (clipped at the ends)."""
    if f(low) >= target:
        return low
    if f(high) <= target:
        return high
    from scipy.optimize import brentq

    return float(brentq(lambda r: f(r) - target, low, high, xtol=1e-12))


def fit(a: np.ndarray, b: np.ndarray, users: np.ndarray) -> StudyModel:
    """Fit the model to two methods' hits `a [S_a, N]`, `b [S_b, N]` (0/1, each at least two seeds) on the same
    examples, `users [N]`."""
    from scipy.stats import norm

    a, b = (np.asarray(m, float) for m in (a, b))
    if min(a.shape[0], b.shape[0]) < 2:
        raise ValueError("fitting the training noise needs at least two seeds of each method")
    _, member = np.unique(users, return_inverse=True)
    windows = np.bincount(member)
    n = member.size
    p = (float(a.mean()), float(b.mean()))
    mu = [float(norm.ppf(min(max(q, 1e-3), 1 - 1e-3))) for q in p]

    def pairs_mean(m: np.ndarray, k: np.ndarray) -> float:  # mean over seed pairs s != t of mean_j m_s,j * k_t,j
        same = m is k
        total, count = 0.0, 0
        for s in range(m.shape[0]):
            for t in range(k.shape[0]):
                if not (same and s == t):
                    total += float((m[s] * k[t]).mean())
                    count += 1
        return total / count

    # two seeds of one method on one example share u + x + v; two methods share u + x
    within = np.mean([_solve(lambda r, q=q: _phi2(q, q, r), pairs_mean(m, m)) for m, q in zip((a, b), mu)])
    between = _solve(lambda r: _phi2(mu[0], mu[1], r), pairs_mean(a, b))
    within = max(within, between)
    # within one run, two windows of one user share u + c; the run means' spread between seeds gives c
    multi = windows > 1
    same_user_pairs = float((windows * (windows - 1)).sum())
    run_var = np.mean([m.mean(1).var(ddof=1) for m in (a, b)])
    user, run = between, 0.0
    for _ in range(6):
        def expected_run_var(c: float, u: float = user) -> float:
            total = 0.0
            for q in mu:
                p_q = float(norm.cdf(q))
                diagonal = n * (p_q - _phi2(q, q, within))
                same_user = same_user_pairs * (_phi2(q, q, u + c) - _phi2(q, q, u)) if multi.any() else 0.0
                other_pairs = n * n - n - same_user_pairs
                total += (diagonal + same_user + other_pairs * (_phi2(q, q, c) - p_q ** 2)) / n ** 2
            return total / len(mu)

        run = _solve(expected_run_var, run_var, 0.0, max(0.0, 0.95 - within))
        if not multi.any():
            break
        observed = []
        for m in (a, b):
            sums = np.stack([np.bincount(member, weights=row) for row in m])  # [S, G]
            observed.append(float(((sums ** 2 - sums).sum(1)).mean() / same_user_pairs))
        user = np.mean([_solve(lambda r, q=q: _phi2(q, q, r), o) for q, o in zip(mu, observed)]) - run
        user = min(max(user, 0.0), between)
    return StudyModel(p=p, user=float(user), example=float(between - user), method=float(within - between),
                      run=float(run), windows=tuple(int(w) for w in windows))


def simulate(model: StudyModel, seeds: int, rng: np.random.Generator):
    """One simulated study: (hits a [S, N], hits b [S, N], users [N], truths {estimand: a - b})."""
    from scipy.stats import norm

    windows = np.asarray(model.windows)
    users = np.repeat(np.arange(windows.size), windows)
    n = users.size
    mu = np.asarray([norm.ppf(q) for q in model.p])[:, None, None]  # [2, 1, 1]
    u = rng.normal(0, math.sqrt(model.user), windows.size)[users]
    x = rng.normal(0, math.sqrt(model.example), n)
    v = rng.normal(0, math.sqrt(model.method), (2, 1, n))
    c = rng.normal(0, math.sqrt(model.run), (2, seeds, 1))
    e = rng.normal(0, math.sqrt(max(model.residual, 1e-9)), (2, seeds, n))
    hits = (mu + u + x + v + c + e > 0).astype(float)  # [2, S, N]
    # the estimands: integrate what each one leaves random
    fixed_test = norm.cdf((mu + u + x + v) / math.sqrt(model.run + model.residual))[:, 0]  # [2, N]
    fixed_runs = norm.cdf((mu + c) / math.sqrt(1.0 - model.run))[:, :, 0]  # [2, S]
    truths = {"population": float(model.p[0] - model.p[1]),
              "test_set": float((fixed_test[0] - fixed_test[1]).mean()),
              "runs": float(fixed_runs[0].mean() - fixed_runs[1].mean())}
    return hits[0], hits[1], users, truths


def coverage(model: StudyModel, seeds: int, replicates: int = 1000, names: Sequence[str] | None = None,
             seed: int = 0) -> dict[str, dict]:
    """Share of `replicates` simulated studies at `seeds` seeds whose 95% interval (paired by seed) holds its own
    estimand's true value, with the mean half-width: {name: {estimand, coverage, half_width, mc_se}}."""
    names = [n for n in (names or INTERVALS) if INTERVALS[n].min_seeds <= seeds]
    rng = np.random.default_rng(seed)
    hit = {n: 0 for n in names}
    width = {n: 0.0 for n in names}
    for _ in range(replicates):
        a, b, users, truths = simulate(model, seeds, rng)
        x = a - b
        for n in names:
            low, high = INTERVALS[n].compute(x, users)
            hit[n] += low <= truths[INTERVALS[n].estimand] <= high
            width[n] += (high - low) / 2
    out = {}
    for n in names:
        share = hit[n] / replicates
        out[n] = {"estimand": INTERVALS[n].estimand, "coverage": share, "half_width": width[n] / replicates,
                  "mc_se": math.sqrt(max(share * (1 - share), 1e-12) / replicates)}
    return out
