"""Leaderboard statistics, checked against scipy (tests only) and hand-computed numbers."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest

from store.report import leaderboard_stats as ls
from store.report.leaderboard_stats import (
    PairedResult,
    holm,
    mean_interval,
    paired_difference,
    pareto_front,
    separates,
    t_interval,
    t_quantile,
    wilcoxon_signed_rank,
)

stats = pytest.importorskip("scipy.stats")


def scipy_wilcoxon(d: np.ndarray) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(
            d, zero_method="wilcox", correction=False, alternative="two-sided", method="auto"
        )
    return float(res.statistic), float(res.pvalue)


# ------------------------------------------------------------------------------------------
# t quantile and interval


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_t_quantile_matches_scipy(level):
    p = 0.5 + level / 2
    for df in range(1, 201):
        want = stats.t.ppf(p, df)
        got = t_quantile(p, df)
        assert got == pytest.approx(want, rel=1e-6, abs=1e-6), (df, level)
        assert t_quantile(1 - p, df) == pytest.approx(-want, rel=1e-6, abs=1e-6)


def test_t_quantile_far_tail_and_fractional_df():
    for df in (0.5, 1.5, 3, 7.25, 30, 1000):
        for p in (1e-6, 0.001, 0.3, 0.5, 0.7, 0.999, 1 - 1e-6):
            assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-8, abs=1e-10)
    assert t_quantile(0.975, 11) == pytest.approx(2.2010, abs=5e-5)  # printed t tables
    assert math.isnan(t_quantile(0.0, 5)) and math.isnan(t_quantile(0.5, 0))


def test_t_interval_matches_scipy():
    rng = np.random.default_rng(1)
    for n in (2, 3, 10, 57):
        x = rng.normal(2.0, 3.0, size=n)
        for level in (0.9, 0.95, 0.99):
            mean, low, high = t_interval(x, level)
            lo_s, hi_s = stats.t.interval(level, n - 1, loc=x.mean(), scale=stats.sem(x))
            assert mean == pytest.approx(x.mean())
            assert low == pytest.approx(lo_s, rel=1e-9) and high == pytest.approx(hi_s, rel=1e-9)


def test_t_interval_by_hand_and_small_n():
    # x = 1, 2, 3: mean 2, s = 1, sem = 1/sqrt(3).
    # t_{0.975, 2} = 0.95 / sqrt(2 * 0.975 * 0.025) (closed form for df = 2).
    mean, low, high = t_interval([1.0, 2.0, 3.0])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((2.0, 2.0 - half, 2.0 + half), rel=1e-12)
    mean, low, high = t_interval([5.0])
    assert mean == 5.0 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in t_interval([]))
    assert t_interval([4.0, 4.0, 4.0]) == (4.0, 4.0, 4.0)


# ------------------------------------------------------------------------------------------
# Bootstrap


def test_mean_interval_deterministic_and_seeded():
    x = np.random.default_rng(2).normal(size=40)
    first = mean_interval(x, seed=7)
    assert mean_interval(x, seed=7) == first
    assert mean_interval(x.tolist(), seed=7) == first
    assert mean_interval(x, seed=8) != first
    mean, low, high = first
    assert mean == pytest.approx(x.mean())
    assert low < mean < high


def test_mean_interval_equals_an_explicit_bootstrap():
    x = np.array([0.3, 1.2, -0.4, 2.5, 0.9, 1.1, 0.0])
    rng = np.random.default_rng(3)
    means = [x[rng.integers(0, x.size, size=x.size)].mean() for _ in range(500)]
    want = np.percentile(means, [5, 95])
    _, low, high = mean_interval(x, seed=3, resamples=500, level=0.9)
    assert (low, high) == pytest.approx(tuple(want), rel=1e-12)


def test_mean_interval_chunking_does_not_change_the_result(monkeypatch):
    x = np.random.default_rng(4).exponential(size=30)
    whole = mean_interval(x, seed=5, resamples=300)
    monkeypatch.setattr(ls, "_MAX_DRAW", 100)  # 3 rows per chunk
    assert mean_interval(x, seed=5, resamples=300) == whole


def test_mean_interval_large_input_is_chunked_and_sane():
    x = np.random.default_rng(6).normal(1.0, 1.0, size=3000)  # 2000 x 3000 > 5e6 indices
    mean, low, high = mean_interval(x)
    sem = x.std(ddof=1) / math.sqrt(x.size)
    assert low < mean < high
    assert high - low == pytest.approx(2 * 1.96 * sem, rel=0.15)


def test_mean_interval_close_to_t_interval_and_scipy_bootstrap():
    x = np.random.default_rng(9).normal(0.5, 2.0, size=200)
    _, low, high = mean_interval(x, resamples=4000)
    _, t_low, t_high = t_interval(x)
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=4000, rng=1)
    width = t_high - t_low
    for a, b, c in (
        (low, t_low, ref.confidence_interval.low),
        (high, t_high, ref.confidence_interval.high),
    ):
        assert abs(a - b) < 0.1 * width and abs(a - c) < 0.1 * width


def test_mean_interval_constant_column_has_zero_width():
    mean, low, high = mean_interval([0.1] * 17, seed=11)
    assert low == high
    assert mean == pytest.approx(0.1) and low == pytest.approx(0.1)


def test_mean_interval_small_and_bad_input():
    mean, low, high = mean_interval([2.5])
    assert mean == 2.5 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in mean_interval([]))
    with pytest.raises(ValueError):
        mean_interval([1.0, math.nan])
    with pytest.raises(ValueError):
        mean_interval([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError):
        mean_interval([[1.0, 2.0]])


# ------------------------------------------------------------------------------------------
# Wilcoxon signed-rank


def expected_method(d: np.ndarray) -> str:
    """scipy 1.17's method="auto", decided on len(d) with zeros included."""
    nz = d[d != 0]
    ties = np.unique(np.abs(nz)).size < nz.size
    if d.size <= 50 and not ties and nz.size == d.size:
        return "wilcoxon exact"
    if d.size <= 13:
        return "wilcoxon exact sign-flip"
    return "wilcoxon normal approx"


def random_cases():
    """Differences of every length 1..80, continuous, tied, with zeros. scipy enumerates sign
    flips slowly (over a second at n = 13), so tied/zero cases of n 12 and 13 are left to
    test_wilcoxon_sign_flip_against_enumeration."""
    rng = np.random.default_rng(12)
    sizes = list(range(1, 81)) + [2, 5, 9, 11, 14, 20, 40, 50, 51]
    for n in sizes:
        yield rng.normal(0.3, 1.0, size=n)  # continuous: no ties, no zeros
        if n in (12, 13):
            continue
        yield np.round(rng.normal(0.2, 1.5, size=n))  # ties and (usually) zeros
        tied = np.round(rng.normal(-0.2, 2.0, size=n) * 2) / 2  # half steps: ties, zeros
        tied[tied == 0] = 0.5
        yield tied  # ties without zeros
        z = rng.normal(size=n)
        z[rng.random(n) < 0.2] = 0.0
        yield z  # zeros without ties


def test_wilcoxon_matches_scipy_on_random_cases():
    seen = set()
    for d in random_cases():
        if d.size == 1 and d[0] == 0:
            continue  # scipy raises there; see test_wilcoxon_edge_cases
        stat, p, method = wilcoxon_signed_rank(d)
        s_stat, s_p = scipy_wilcoxon(d)
        assert stat == s_stat, d
        assert p == pytest.approx(s_p, rel=1e-9, abs=1e-12), (d, method)
        assert method == expected_method(d)
        seen.add(method)
    assert seen == {"wilcoxon exact", "wilcoxon exact sign-flip", "wilcoxon normal approx"}


def enumerated_sign_flip_p(d: np.ndarray) -> float:
    """Two-sided p over all 2**n sign flips of d, by brute force (zeros flip too, harmlessly)."""
    n = d.size
    nz = d != 0
    ranks = np.zeros(n)
    ranks[nz] = stats.rankdata(np.abs(d[nz]))
    observed = ranks[d > 0].sum()
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    null = ((signs * d) > 0) @ ranks
    p = 2 * min(np.mean(null <= observed), np.mean(null >= observed))
    return min(p, 1.0)


def test_wilcoxon_sign_flip_against_enumeration():
    rng = np.random.default_rng(16)
    for n in (12, 13):
        for _ in range(15):
            d = np.round(rng.normal(0.4, 1.5, size=n))
            stat, p, method = wilcoxon_signed_rank(d)
            if method != "wilcoxon exact sign-flip":
                continue
            assert p == pytest.approx(enumerated_sign_flip_p(d), rel=1e-12)
    # and one n = 13 case against scipy itself (about a second)
    d = np.array([1.0, -2, 2, 0, 3, 3, 3, -1, 4, 5, 0, 2, 6])
    stat, p, method = wilcoxon_signed_rank(d)
    assert method == "wilcoxon exact sign-flip"
    assert (stat, p) == pytest.approx(scipy_wilcoxon(d), rel=1e-9)


def test_wilcoxon_by_hand():
    # ranks 1..5, W- = 3 (the -3), W+ = 12; P(W- <= 3) = #{{}, {1}, {2}, {3}, {1,2}} / 32.
    assert wilcoxon_signed_rank([1.0, 2.0, -3.0, 4.0, 5.0]) == (3.0, 10 / 32, "wilcoxon exact")
    # Ties and a zero: |d| = 1, 1, 2 -> ranks 1.5, 1.5, 3 (zero dropped); W+ = 4.5, W- = 1.5.
    # Sign flips of the ranks give W+ in {0, 1.5, 1.5, 3, 3, 4.5, 4.5, 6}: P(W+ >= 4.5) = 3/8.
    stat, p, method = wilcoxon_signed_rank([1.0, -1.0, 2.0, 0.0])
    assert (stat, p, method) == (1.5, 0.75, "wilcoxon exact sign-flip")
    # Normal approximation, n = 60 tied values 1 (all positive): W+ = 60 * 30.5 = 1830,
    # mean = 915, var = (60*61*121 - (60**3 - 60)/2) / 24 = 60*61*121/24 - 4498.75.
    stat, p, method = wilcoxon_signed_rank(np.ones(60))
    z = 915 / math.sqrt(60 * 61 * 121 / 24 - (60**3 - 60) / 48)
    assert stat == 0.0 and method == "wilcoxon normal approx"
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)


def test_wilcoxon_edge_cases():
    stat, p, _ = wilcoxon_signed_rank([])
    assert math.isnan(stat) and math.isnan(p)
    assert scipy_wilcoxon(np.array([])) != scipy_wilcoxon(np.array([]))  # nan, nan
    for n in (2, 5, 13):  # all zeros, small n: every sign flip ties the observed W+ = 0
        assert wilcoxon_signed_rank(np.zeros(n))[:2] == (0.0, 1.0) == scipy_wilcoxon(np.zeros(n))
    for n in (14, 30, 60):  # all zeros, normal approx: zero variance, p = nan as in scipy
        stat, p, method = wilcoxon_signed_rank(np.zeros(n))
        assert stat == 0.0 and math.isnan(p) and math.isnan(scipy_wilcoxon(np.zeros(n))[1])
    # A single zero: scipy's permutation test refuses one observation; we answer as for n <= 13.
    with pytest.raises(ValueError):
        scipy_wilcoxon(np.array([0.0]))
    assert wilcoxon_signed_rank([0.0]) == (0.0, 1.0, "wilcoxon exact sign-flip")
    assert wilcoxon_signed_rank([3.0])[:2] == (0.0, 1.0) == scipy_wilcoxon(np.array([3.0]))
    with pytest.raises(ValueError):
        wilcoxon_signed_rank([1.0, math.nan])


# ------------------------------------------------------------------------------------------
# Paired comparison


def test_paired_difference():
    rng = np.random.default_rng(13)
    b = rng.normal(size=25)
    a = b + 0.5 + 0.3 * rng.normal(size=25)
    res = paired_difference(a, b, seed=3)
    d = a - b
    assert isinstance(res, PairedResult) and res.n == 25
    assert (res.mean_diff, res.low, res.high) == mean_interval(d, seed=3)
    assert res.low < res.mean_diff < res.high and res.low > 0
    assert (res.p, res.method) == wilcoxon_signed_rank(d)[1:]
    assert res.p == pytest.approx(scipy_wilcoxon(d)[1], rel=1e-9)
    assert res.method == "wilcoxon exact"
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.p = 0.0  # type: ignore[misc]
    assert paired_difference(a, b, seed=3) == res


def test_paired_difference_rejects_misaligned_or_missing():
    with pytest.raises(ValueError):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        paired_difference([1.0, math.nan], [1.0, 2.0])


# ------------------------------------------------------------------------------------------
# Holm, Pareto front, separation


def test_holm_by_hand():
    got = holm([0.01, 0.04, 0.03, 0.005])
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, max(1*0.04, 0.06)
    np.testing.assert_allclose(got, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)


def test_holm_nan_cap_ties_and_monotone():
    got = holm([0.01, math.nan, 0.02])  # m = 2
    np.testing.assert_allclose(got, [0.02, math.nan, 0.02], rtol=1e-12)
    # sorted 0.3, 0.5, 0.9 -> 3*0.3 = 0.9, min(1, 2*0.5) = 1, max(1, 0.9) = 1
    np.testing.assert_allclose(holm([0.5, 0.3, 0.9]), [1.0, 0.9, 1.0], rtol=1e-12)
    np.testing.assert_allclose(holm([0.6, 0.7]), [1.0, 1.0], rtol=1e-12)  # 2*0.6 capped at 1
    np.testing.assert_allclose(holm([0.01, 0.01, 0.04]), [0.03, 0.03, 0.04], rtol=1e-12)
    assert holm([]).shape == (0,) and np.isnan(holm([math.nan, math.nan])).all()
    p = np.random.default_rng(14).random(30)
    adj = holm(p)
    order = np.argsort(p)
    assert (np.diff(adj[order]) >= 0).all() and (adj >= p).all() and (adj <= 1).all()


def brute_front(x, y):
    n = len(x)
    out = np.zeros(n, dtype=bool)
    for i in range(n):
        if math.isnan(x[i]) or math.isnan(y[i]):
            continue
        out[i] = not any(
            x[j] >= x[i] and y[j] >= y[i] and (x[j] > x[i] or y[j] > y[i]) for j in range(n)
        )
    return out


def test_pareto_front_dreamsim_lower_is_better():
    # x: CLIP text score (higher better); y: DreamSim distance to the concept (lower better).
    clip = [0.30, 0.28, 0.31, 0.25, 0.31, math.nan, 0.29]
    dsim = [0.40, 0.30, 0.45, 0.20, 0.50, 0.10, 0.30]
    front = pareto_front(clip, dsim, x_higher_better=True, y_higher_better=False)
    # 0.31/0.50 is beaten by 0.31/0.45; 0.28/0.30 by 0.29/0.30; NaN is never on the front.
    assert front.tolist() == [True, False, True, True, False, False, True]
    flipped = pareto_front(clip, [-v for v in dsim])
    assert flipped.tolist() == front.tolist()


def test_pareto_front_matches_brute_force_with_ties():
    rng = np.random.default_rng(15)
    for _ in range(50):
        n = int(rng.integers(1, 25))
        x = rng.integers(0, 5, size=n).astype(float)
        y = rng.integers(0, 5, size=n).astype(float)
        x[rng.random(n) < 0.1] = math.nan
        x[rng.random(n) < 0.05] = -math.inf
        for xh in (True, False):
            for yh in (True, False):
                want = brute_front(x if xh else -x, y if yh else -y)
                got = pareto_front(x, y, x_higher_better=xh, y_higher_better=yh)
                assert got.tolist() == want.tolist(), (x, y, xh, yh)


def test_pareto_front_small_cases():
    assert pareto_front([], []).tolist() == []
    assert pareto_front([1.0, 1.0], [2.0, 2.0]).tolist() == [True, True]  # equal: both stay
    assert pareto_front([2.0, 1.0], [-math.inf, 0.0]).tolist() == [True, True]
    with pytest.raises(ValueError):
        pareto_front([1.0], [1.0, 2.0])


def test_separates():
    assert separates(0.5, 0.7, 0.1, 0.4)
    assert not separates(0.5, 0.7, 0.1, 0.5)  # touching is not separated
    assert not separates(0.5, 0.7, 0.6, 0.9)
    # lower is better (DreamSim): the best's interval must lie entirely below.
    assert separates(0.10, 0.20, 0.25, 0.30, higher_better=False)
    assert not separates(0.10, 0.26, 0.25, 0.30, higher_better=False)
    assert not separates(math.nan, 0.7, 0.1, 0.4)
