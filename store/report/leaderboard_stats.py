"""Statistics for a leaderboard of paired comparisons (numpy only: the store side has no scipy).

A leaderboard row is compared with another over the same units (cells, concepts...), so the
questions are paired: how large is the mean difference, how sure are we of it, and is it
significant once every column has been tested. This module answers them with:

- ``mean_interval``: seeded percentile bootstrap of a mean (same input, same interval, so a
  regenerated table never changes its numbers);
- ``t_interval`` / ``t_quantile``: Student's t interval, for when the bootstrap is too coarse
  (few units);
- ``wilcoxon_signed_rank``: equal to ``scipy.stats.wilcoxon(d, zero_method="wilcox",
  correction=False, alternative="two-sided", method="auto")`` of scipy 1.17 (see its docstring);
- ``paired_difference``: the bootstrap interval and the Wilcoxon p of ``a - b`` in one record;
- ``holm``: Holm step-down adjustment across the comparisons of a table;
- ``pareto_front`` and ``separates``: which rows to draw on the front and which best to bold.

Inputs of the numeric functions are 1-D and NaN-free: a NaN means a missing unit, and dropping it
is the caller's business (pairing must drop it from both rows); they raise ValueError on NaN
instead of returning a silently poisoned number. ``holm`` and ``pareto_front`` accept NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

ArrayLike = npt.ArrayLike

# Above this many drawn indices (resamples x n) the bootstrap draws in chunks of rows.
_MAX_DRAW = 5_000_000
# scipy's method="auto" switches to the normal approximation above this many differences
# (zeros included), and enumerates sign flips for ties/zeros only up to this many (2**13 <= 9999,
# the default number of resamples of its permutation test, which is then exact).
_AUTO_EXACT_MAX_N = 50
_AUTO_FLIP_MAX_N = 13


def _vector(values: ArrayLike, name: str = "values") -> np.ndarray:
    """A float 1-D copy of ``values``; NaN is refused (a missing unit must be dropped upstream)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN: drop the missing units before calling")
    return arr


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")


# --------------------------------------------------------------------------------------------
# Bootstrap and t intervals


def mean_interval(
    values: ArrayLike, *, seed: int = 0, resamples: int = 2000, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap of the mean over units.

    Seeded (``np.random.default_rng(seed)``) so the same column always gets the same interval.
    Units are resampled with replacement; the bounds are the (1 - level)/2 and (1 + level)/2
    quantiles (numpy's default linear interpolation) of the resampled means. n == 1 gives
    (value, nan, nan), n == 0 gives (nan, nan, nan): no spread can be estimated.
    """
    _check_level(level)
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    x = _vector(values)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(x))
    if n == 1:
        return mean, math.nan, math.nan
    rng = np.random.default_rng(seed)
    # Draw the whole index matrix at once, but in row chunks when it would be large, so memory
    # stays bounded; the chunk size depends only on n, so the result depends only on the input.
    rows = max(1, min(resamples, _MAX_DRAW // n))
    means = np.empty(resamples, dtype=np.float64)
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b), continued fraction (modified Lentz).

    Used for the t tail; the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) keeps the fraction in its
    fast-converging region.
    """
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - _betainc(b, a, 1.0 - x)
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    tiny = 1e-300
    c = 1.0
    d = 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        delta = 1.0
        for num in (even, odd):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            delta = d * c
            h *= delta
        if abs(delta - 1.0) < 1e-16:
            break
    return math.exp(log_front) * h / a


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0, computed directly (no 1 - cdf cancellation in the far tail)."""
    t2 = t * t
    return 0.5 * _betainc(df / 2.0, 0.5, df / (df + t2))


def _t_pdf(t: float, df: float) -> float:
    log_c = math.lgamma((df + 1.0) / 2.0) - math.lgamma(df / 2.0) - 0.5 * math.log(df * math.pi)
    return math.exp(log_c - (df + 1.0) / 2.0 * math.log1p(t * t / df))


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with ``df`` degrees of freedom (scipy.stats.t.ppf).

    Closed forms for df 1 and 2; otherwise Newton on the upper tail, safeguarded by a bracket
    (the tail is decreasing and convex for t > 0, so the bracket always shrinks).
    """
    if not df > 0 or not 0.0 < p < 1.0:
        return math.nan
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    q = 1.0 - p  # target upper tail
    if df == 1:
        return math.tan(math.pi * (p - 0.5))
    if df == 2:
        return (2.0 * p - 1.0) / math.sqrt(2.0 * p * q)
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > q:
        lo, hi = hi, hi * 2.0
    t = 0.5 * (lo + hi)
    for _ in range(200):
        f = _t_upper_tail(t, df) - q
        if f > 0:
            lo = t
        else:
            hi = t
        step = f / _t_pdf(t, df)  # d(tail)/dt = -pdf, so Newton adds f / pdf
        new = t + step
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - t) <= 1e-14 * max(1.0, abs(t)):
            return new
        t = new
    return t


def t_interval(values: ArrayLike, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval for the mean, mean +- t_{n-1} * s / sqrt(n).

    n < 2 gives nan bounds (no sample standard deviation); n == 0 also a nan mean.
    """
    _check_level(level)
    x = _vector(values)
    n = x.size
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = float(np.mean(x))
    if n < 2:
        return mean, math.nan, math.nan
    sem = float(np.std(x, ddof=1)) / math.sqrt(n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sem
    return mean, mean - half, mean + half


# --------------------------------------------------------------------------------------------
# Wilcoxon signed-rank


def _average_ranks(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of ``values`` and the sizes of its groups of equal values."""
    order = np.argsort(values, kind="stable")
    sorted_vals = values[order]
    starts = np.flatnonzero(np.concatenate(([True], sorted_vals[1:] != sorted_vals[:-1])))
    counts = np.diff(np.append(starts, values.size))
    avg = starts + (counts + 1) / 2.0  # 1-based average rank of each group
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = np.repeat(avg, counts)
    return ranks, counts


def _exact_no_ties_pmf(n: int) -> np.ndarray:
    """Null pmf of W+ for n untied nonzero differences (scipy's _get_wilcoxon_distr)."""
    c = np.ones(1, dtype=np.float64)
    for k in range(1, n + 1):
        prev = c
        c = np.zeros(k * (k + 1) // 2 + 1, dtype=np.float64)
        m = prev.size
        c[:m] = prev * 0.5
        c[-m:] += prev * 0.5
    return c


def _exact_no_ties_p(r_plus: float, n: int) -> float:
    """Two-sided exact p, computed as scipy's WilcoxonDistribution does (same sums, same p)."""
    pmf = _exact_no_ties_pmf(n)
    mean = n * (n + 1) / 4.0
    k_sf = int(math.floor(r_plus))
    k_cdf = int(math.ceil(r_plus))
    sf = float(pmf[k_sf:].sum()) if k_sf <= mean else 1.0 - float(pmf[:k_sf].sum())
    cdf = float(pmf[: k_cdf + 1].sum()) if k_cdf <= mean else 1.0 - float(pmf[k_cdf + 1 :].sum())
    return min(max(2.0 * min(sf, cdf), 0.0), 1.0)


def _sign_flip_p(ranks: np.ndarray, r_plus: float) -> float:
    """Two-sided p of W+ over all 2**m sign flips of the nonzero differences (ties allowed).

    This is what scipy's exact permutation test computes: doubled ranks are integers, so the
    null distribution is counted exactly by dynamic programming instead of enumerated; the zeros
    scipy also flips multiply every count by the same power of two and cancel.
    """
    doubled = np.rint(2.0 * ranks).astype(np.int64)
    counts = np.zeros(int(doubled.sum()) + 1, dtype=np.float64)
    counts[0] = 1.0
    for r in doubled:
        shifted = np.zeros_like(counts)
        shifted[r:] = counts[: counts.size - r]
        counts = counts + shifted
    total = 2.0**ranks.size
    support = np.arange(counts.size) / 2.0
    gamma = abs(100 * np.finfo(np.float64).eps * r_plus)  # scipy's tolerance for equal values
    less = counts[support <= r_plus + gamma].sum() / total
    greater = counts[support >= r_plus - gamma].sum() / total
    return float(min(max(2.0 * min(less, greater), 0.0), 1.0))


def _normal_two_sided(z: float) -> float:
    """2 * P(Z > |z|) for a standard normal, via erfc (no scipy); nan stays nan."""
    if math.isnan(z):
        return math.nan
    return math.erfc(abs(z) / math.sqrt(2.0))


def wilcoxon_signed_rank(d: ArrayLike) -> tuple[float, float, str]:
    """(statistic, two-sided p, method) of the Wilcoxon signed-rank test of the differences ``d``.

    Equal to ``scipy.stats.wilcoxon(d, zero_method="wilcox", correction=False,
    alternative="two-sided", method="auto")`` of scipy 1.17, whose "auto" decides on the length
    n of ``d`` *including* zeros:

    - n > 50: normal approximation (``"wilcoxon normal approx"``);
    - n <= 50, no zeros and no ties among |d|: exact null distribution (``"wilcoxon exact"``);
    - n <= 13 with zeros or ties: exact permutation test over all sign flips
      (``"wilcoxon exact sign-flip"``);
    - 13 < n <= 50 with zeros or ties: normal approximation.

    Zeros are dropped before ranking ("wilcox"), ties get average ranks, and the normal
    approximation uses the tie-corrected variance without continuity correction. The statistic
    is min(W+, W-). Edge cases, as scipy: empty d gives (nan, nan); all zeros gives statistic 0
    and p = 1 when n <= 13 (every sign flip is as extreme) but p = nan when n > 13 (zero
    variance). A single zero (scipy raises: its permutation test needs two observations) gives
    statistic 0 and p = 1, as for longer all-zero d up to 13.
    """
    x = _vector(d, "d")
    n_all = x.size
    if n_all == 0:
        return math.nan, math.nan, "wilcoxon undefined (empty)"
    nonzero = x[x != 0]
    n_zero = n_all - nonzero.size
    count = nonzero.size
    ranks, groups = _average_ranks(np.abs(nonzero))
    r_plus = float(ranks[nonzero > 0].sum())
    r_minus = float(ranks[nonzero < 0].sum())
    statistic = min(r_plus, r_minus)
    has_ties = bool((groups > 1).any())

    if n_all <= _AUTO_EXACT_MAX_N and not has_ties and n_zero == 0:
        return statistic, _exact_no_ties_p(r_plus, count), "wilcoxon exact"
    if n_all <= _AUTO_FLIP_MAX_N:
        return statistic, _sign_flip_p(ranks, r_plus), "wilcoxon exact sign-flip"
    mean = count * (count + 1.0) * 0.25
    var_num = count * (count + 1.0) * (2.0 * count + 1.0)
    tie_correct = float(np.sum(groups.astype(np.float64) ** 3 - groups))
    se = math.sqrt((var_num - tie_correct / 2.0) / 24.0)
    z = (r_plus - mean) / se if se > 0 else math.nan
    return statistic, _normal_two_sided(z), "wilcoxon normal approx"


# --------------------------------------------------------------------------------------------
# Paired comparison


@dataclass(frozen=True)
class PairedResult:
    """Paired comparison of two rows over the same units: d = a - b.

    ``low``/``high`` bound the mean of d (seeded percentile bootstrap over units); ``p`` is the
    two-sided Wilcoxon signed-rank p of d, ``method`` the variant that computed it.
    """

    n: int
    mean_diff: float
    low: float
    high: float
    p: float
    method: str


def paired_difference(
    a: ArrayLike,
    b: ArrayLike,
    *,
    seed: int = 0,
    resamples: int = 2000,
    level: float = 0.95,
) -> PairedResult:
    """Compare ``a`` with ``b``, aligned per unit: bootstrap interval of mean(a - b) and the
    Wilcoxon p. Units missing from either must be dropped from both by the caller."""
    xa = _vector(a, "a")
    xb = _vector(b, "b")
    if xa.shape != xb.shape:
        raise ValueError(f"a and b must be aligned per unit, got {xa.size} and {xb.size} values")
    d = xa - xb
    mean, low, high = mean_interval(d, seed=seed, resamples=resamples, level=level)
    _, p, method = wilcoxon_signed_rank(d)
    return PairedResult(n=int(d.size), mean_diff=mean, low=low, high=high, p=p, method=method)


# --------------------------------------------------------------------------------------------
# Multiple comparisons, Pareto front, bolding


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    The k-th smallest of m p-values becomes max over j <= k of min(1, (m - j + 1) p_(j)), so the
    adjusted values keep the order of the raw ones. NaN entries (comparisons that could not be
    made) stay NaN and do not count in m.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues must be 1-D, got shape {p.shape}")
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    if m == 0:
        return out
    order = valid[np.argsort(p[valid], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


def pareto_front(
    x: ArrayLike,
    y: ArrayLike,
    *,
    x_higher_better: bool = True,
    y_higher_better: bool = True,
) -> np.ndarray:
    """Boolean mask of the points no other point dominates.

    A point is dominated when another is at least as good on both axes and strictly better on
    one; equal points therefore do not remove each other. A NaN coordinate keeps a point off the
    front, and such a point dominates nothing. O(n log n): sort by x, best first.
    """
    xs = np.asarray(x, dtype=np.float64)
    ys = np.asarray(y, dtype=np.float64)
    if xs.ndim != 1 or xs.shape != ys.shape:
        raise ValueError(f"x and y must be 1-D of equal length, got {xs.shape} and {ys.shape}")
    front = np.zeros(xs.shape, dtype=bool)
    valid = np.flatnonzero(~(np.isnan(xs) | np.isnan(ys)))
    if valid.size == 0:
        return front
    gx = xs[valid] if x_higher_better else -xs[valid]
    gy = ys[valid] if y_higher_better else -ys[valid]
    order = np.lexsort((-gy, -gx))  # x descending, then y descending within equal x
    sx, sy = gx[order], gy[order]
    starts = np.flatnonzero(np.concatenate(([True], sx[1:] != sx[:-1])))
    group = np.cumsum(np.concatenate(([True], sx[1:] != sx[:-1]))) - 1
    group_best = sy[starts]  # best y within each group of equal x
    # Best y among points with strictly better x: running max of the earlier groups' best.
    # The first group has none (a y of -inf there is still on the front).
    before = np.concatenate(([-np.inf], np.maximum.accumulate(group_best)[:-1]))
    keep = (sy == group_best[group]) & ((group == 0) | (sy > before[group]))
    front[valid[order[keep]]] = True
    return front


def separates(
    best_low: float,
    best_high: float,
    other_low: float,
    other_high: float,
    higher_better: bool = True,
) -> bool:
    """Whether the best row's interval lies strictly beyond the other's (no overlap, no touch).

    A table bolds its best per column only when this holds against every other row; a NaN bound
    never separates.
    """
    if higher_better:
        return bool(best_low > other_high)
    return bool(best_high < other_low)
