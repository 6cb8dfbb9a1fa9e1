"""Statistics across seeds: the seed is the unit of analysis, so n is the number of runs, not of steps.

:func:`compare` groups recordings by a key, reduces each run to one metric value and compares groups, each
other group against a ``baseline`` group (planned comparisons) or every pair. Per group: n, per-seed values,
mean ± std (ddof 1), a 95% t-interval and the IQM (25% trimmed mean). Per comparison of A against B (A − B,
so a positive difference means A is higher):

- Welch's t-test; an exact permutation test of |mean(A) − mean(B)| enumerating every split of the pooled
  values when there are at most ``EXACT_LIMIT`` splits, else a Monte Carlo test with
  ``MONTE_CARLO_RESAMPLES`` resamples (the count is reported); the two-sided Mann-Whitney U test (exact for
  small samples without ties);
- with ``paired`` (runs matched by seed, seeds present in both groups): the paired t-test and the Wilcoxon
  signed-rank test;
- Hedges' g (pooled-std Cohen's d times the exact small-sample correction J = Γ(ν/2)/(√(ν/2)·Γ((ν−1)/2)));
- the probability of improvement P(A > B) + ½P(A = B) = U_A/(n_A·n_B), with a 95% stratified percentile
  bootstrap interval (``BOOTSTRAP_RESAMPLES`` resamples, seeded);
- ``p_adjusted``: the primary p-value (Welch's t, or the paired t with ``paired``) adjusted over all
  comparisons by Holm (planned comparisons) or Benjamini-Hochberg (``correction="auto"`` picks Holm for at
  most ``HOLM_MAX`` comparisons, else BH).

Warnings say in plain words when n is too small for a test to reach p < 0.05 at all (3 vs 3 runs: the
smallest two-sided permutation or Mann-Whitney p is 0.10; 5 pairs: the smallest Wilcoxon p is 0.0625).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from itertools import chain, combinations
from typing import Any

import numpy as np
from scipy import special, stats

from analyses.grouping import MISSING, Run, group_runs, load_runs, metric_names
from recorders.format.errors import ConfigError, RecordingError

__all__ = [
    "ComparisonReport",
    "ComparisonRow",
    "GroupSummary",
    "adjust_pvalues",
    "compare",
    "compare_values",
    "hedges_g",
    "metric_names",
    "permutation_p",
    "summarize",
]

EXACT_LIMIT = 200_000
MONTE_CARLO_RESAMPLES = 20_000
BOOTSTRAP_RESAMPLES = 2_000
HOLM_MAX = 5
CORRECTIONS = ("auto", "holm", "bh", "none")
SPLIT_KEYS = ("dataset", "shots")  # runs compared together must agree on these (unless grouped by them)


@dataclass
class GroupSummary:
    """One group's per-seed values (``values[i]`` is the run with ``seeds[i]``) and their summary."""

    name: str
    n: int
    seeds: list[int]
    values: list[float]
    paths: list[str]
    mean: float
    std: float  # sample standard deviation (ddof 1); NaN for n = 1
    ci_low: float  # 95% t-interval of the mean
    ci_high: float
    iqm: float  # interquartile mean, scipy.stats.trim_mean(values, 0.25)


@dataclass
class ComparisonRow:
    """Group ``a`` against group ``b``: differences are a − b."""

    a: str
    b: str
    n_a: int
    n_b: int
    mean_diff: float
    welch_t: float
    welch_p: float
    perm_p: float
    perm_resamples: int | None  # None: exact enumeration; else Monte Carlo with this many resamples
    mwu_u: float  # U statistic of a
    mwu_p: float
    hedges_g: float
    prob_improvement: float  # P(a > b) + ½P(a = b)
    pi_low: float  # 95% bootstrap interval of prob_improvement
    pi_high: float
    paired: bool = False
    n_pairs: int = 0
    paired_t: float = math.nan
    paired_p: float = math.nan
    wilcoxon_w: float = math.nan
    wilcoxon_p: float = math.nan
    p_adjusted: float = math.nan
    correction: str = "none"

    @property
    def primary_p(self) -> float:
        """The p-value that ``p_adjusted`` adjusts: the paired t when paired, else Welch's t."""
        return self.paired_p if self.paired else self.welch_p


@dataclass
class ComparisonReport:
    """What :func:`compare` found: groups, one row per comparison, and plain-word warnings."""

    by: str
    metric: str
    baseline: str | None
    groups: dict[str, GroupSummary]
    rows: list[ComparisonRow]
    warnings: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)  # "path: reason" for runs left out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → None)."""
        return _plain(
            {
                "by": self.by,
                "metric": self.metric,
                "baseline": self.baseline,
                "groups": {k: asdict(g) for k, g in self.groups.items()},
                "rows": [asdict(r) for r in self.rows],
                "warnings": self.warnings,
                "excluded": self.excluded,
            }
        )


# ---------------------------------------------------------------------- pure statistics on arrays
def summarize(name: str, runs: Sequence[Run]) -> GroupSummary:
    """Summary of one group's values (one per run)."""
    x = np.array([r.value for r in runs], np.float64)
    n = len(x)
    mean = float(x.mean())
    std = float(x.std(ddof=1)) if n > 1 else math.nan
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
    return GroupSummary(
        name=name,
        n=n,
        seeds=[r.seed for r in runs],
        values=x.tolist(),
        paths=[str(r.path) for r in runs],
        mean=mean,
        std=std,
        ci_low=mean - half,
        ci_high=mean + half,
        iqm=float(stats.trim_mean(x, 0.25)),
    )


def hedges_g(a: np.ndarray, b: np.ndarray) -> float:
    """Hedges' g of a − b: Cohen's d (pooled sample std) times the exact correction J(ν), ν = n+m−2."""
    n, m = len(a), len(b)
    nu = n + m - 2
    pooled = math.sqrt(((n - 1) * np.var(a, ddof=1) + (m - 1) * np.var(b, ddof=1)) / nu)
    if pooled == 0:
        return math.nan
    j = math.exp(special.gammaln(nu / 2) - special.gammaln((nu - 1) / 2)) / math.sqrt(nu / 2)
    return float(j * (np.mean(a) - np.mean(b)) / pooled)


def permutation_p(a: np.ndarray, b: np.ndarray) -> tuple[float, int | None]:
    """Two-sided permutation p of |mean(a) − mean(b)|, and ``None`` (exact) or the Monte Carlo resample count.

    Exact: the fraction of all C(n+m, n) splits of the pooled values whose statistic is at least the observed
    one (the observed split included). Above ``EXACT_LIMIT`` splits: ``MONTE_CARLO_RESAMPLES`` random splits
    (seeded), p = (hits + 1)/(resamples + 1).
    """
    pooled = np.concatenate([a, b])
    n, total = len(a), pooled.sum()
    observed = abs(a.mean() - b.mean())
    splits = math.comb(len(pooled), n)
    if splits <= EXACT_LIMIT:
        idx = np.fromiter(chain.from_iterable(combinations(range(len(pooled)), n)), np.intp, splits * n)
        sums = pooled[idx.reshape(splits, n)].sum(axis=1)
    else:
        rng = np.random.default_rng(0)
        sums = rng.permuted(np.tile(pooled, (MONTE_CARLO_RESAMPLES, 1)), axis=1)[:, :n].sum(axis=1)
    stat = np.abs(sums / n - (total - sums) / (len(pooled) - n))
    hits = int(np.count_nonzero(stat >= observed * (1 - 1e-12) - 1e-15))
    if splits <= EXACT_LIMIT:
        return hits / splits, None
    return (hits + 1) / (MONTE_CARLO_RESAMPLES + 1), MONTE_CARLO_RESAMPLES


def _prob_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """U_x/(n·m) along the last axis via the rank sum (average ranks count ties as ½)."""
    n, m = x.shape[-1], y.shape[-1]
    ranks = stats.rankdata(np.concatenate([x, y], axis=-1), axis=-1)
    return (ranks[..., :n].sum(axis=-1) - n * (n + 1) / 2) / (n * m)


def compare_values(
    a: np.ndarray,
    b: np.ndarray,
    *,
    name_a: str = "a",
    name_b: str = "b",
    pairs: tuple[np.ndarray, np.ndarray] | None = None,
) -> ComparisonRow:
    """Every test of ``a`` (n,) against ``b`` (m,), n, m ≥ 2; ``pairs`` = seed-matched (a_i, b_i) for the
    paired tests. Deterministic (seeded resampling)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    n, m = len(a), len(b)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # identical values: NaN statistics say it already
        welch = stats.ttest_ind(a, b, equal_var=False)
    perm_p, resamples = permutation_p(a, b)
    mwu = stats.mannwhitneyu(a, b, alternative="two-sided")
    pi = float(mwu.statistic) / (n * m)
    boot = stats.bootstrap(
        (a, b),
        _prob_improvement,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(0),
    )
    ci = boot.confidence_interval
    row = ComparisonRow(
        a=name_a,
        b=name_b,
        n_a=n,
        n_b=m,
        mean_diff=float(a.mean() - b.mean()),
        welch_t=float(welch.statistic),
        welch_p=float(welch.pvalue),
        perm_p=perm_p,
        perm_resamples=resamples,
        mwu_u=float(mwu.statistic),
        mwu_p=float(mwu.pvalue),
        hedges_g=hedges_g(a, b),
        prob_improvement=pi,
        pi_low=float(ci.low),
        pi_high=float(ci.high),
    )
    if pairs is not None:
        pa, pb = np.asarray(pairs[0], np.float64), np.asarray(pairs[1], np.float64)
        row.paired, row.n_pairs = True, len(pa)
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rel = stats.ttest_rel(pa, pb)
        row.paired_t, row.paired_p = float(rel.statistic), float(rel.pvalue)
        if np.any(pa != pb):
            wil = stats.wilcoxon(pa, pb)
            row.wilcoxon_w, row.wilcoxon_p = float(wil.statistic), float(wil.pvalue)
    return row


def adjust_pvalues(p: Sequence[float], method: str) -> np.ndarray:
    """Holm (``holm``) or Benjamini-Hochberg (``bh``) adjusted p-values, or ``p`` unchanged (``none``).

    NaN p-values are left NaN and do not count towards the number of tests.
    """
    values = np.asarray(p, np.float64)
    out = values.copy()
    ok = np.flatnonzero(np.isfinite(values))
    m = len(ok)
    if method == "none" or m == 0:
        return out
    order = ok[np.argsort(values[ok], kind="stable")]
    ranked = values[order]
    if method == "holm":
        adjusted = np.maximum.accumulate((m - np.arange(m)) * ranked)
    elif method == "bh":
        adjusted = np.minimum.accumulate((m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    else:
        raise ConfigError(f"unknown correction {method!r}; use one of {', '.join(CORRECTIONS)}")
    out[order] = np.minimum(adjusted, 1.0)
    return out


def min_two_sided_p(n: int, m: int) -> float:
    """Smallest two-sided p an exact permutation or Mann-Whitney test of n vs m untied values can give."""
    return min(1.0, 2.0 / math.comb(n + m, n))


# ---------------------------------------------------------------------- recordings → report
def compare(
    paths: Sequence[str | os.PathLike[str]],
    by: str,
    metric: str,
    *,
    baseline: str | None = None,
    paired: bool = False,
    include_incomplete: bool = False,
    correction: str = "auto",
    skip_damaged: Callable[[RecordingError], None] | None = None,
) -> ComparisonReport:
    """Group the recordings under ``paths`` by ``by``, reduce each to ``metric`` and compare the groups.

    A damaged recording raises its RecordingError, or with ``skip_damaged`` is passed to it, left out and listed in
    the report's ``excluded``.

    Raises :class:`~recorders.format.errors.WsError` (one line) when nothing useful can be computed: no recordings,
    unknown key or metric, mixed datasets or splits, fewer than two groups with at least two runs, an unknown
    baseline. Incomplete (running or failed) recordings are excluded unless ``include_incomplete``.
    """
    if correction not in CORRECTIONS:
        raise ConfigError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)}")
    warnings: list[str] = []
    excluded: list[str] = []

    def skip(exc: RecordingError) -> None:
        excluded.append(f"{exc} (skipped)")
        if skip_damaged is not None:
            skip_damaged(exc)

    runs = load_runs(paths, metric, skip if skip_damaged is not None else None)
    incomplete = [r for r in runs if r.status != "complete"]
    if incomplete and include_incomplete:
        warnings.append(
            f"included {len(incomplete)} incomplete recording(s) (running or failed): "
            + ", ".join(f"{r.path.name} [{r.status}]" for r in incomplete)
        )
    elif incomplete:
        excluded += [f"{r.path}: status {r.status} (pass --include-incomplete to use it)" for r in incomplete]
        runs = [r for r in runs if r.status == "complete"]
        if not runs:
            raise ConfigError(
                f"all {len(incomplete)} recordings are running or failed; "
                "pass --include-incomplete to compare them anyway"
            )
    no_value = [r for r in runs if not math.isfinite(r.value)]
    excluded += [f"{r.path}: no {metric} (no evaluation or no gate set)" for r in no_value]
    runs = [r for r in runs if math.isfinite(r.value)]
    if not runs:
        raise ConfigError(
            f"no recording has a value of {metric!r}; choose another metric ({', '.join(metric_names())})"
        )
    groups, missing = group_runs(runs, by)
    excluded += [f"{r.path}: no key {by!r}" for r in missing]
    _check_same_split([r for g in groups.values() for r in g], by)

    summaries = {name: summarize(name, g) for name, g in groups.items()}
    if baseline is not None and baseline not in groups:
        raise ConfigError(f"baseline {baseline!r} is not a value of {by!r}; groups: {', '.join(groups)}")
    single = [name for name, s in summaries.items() if s.n < 2]
    if single:
        warnings.append(f"group(s) {', '.join(single)} have one run: no spread, no test; record more seeds")
    usable = [name for name in groups if name not in single]
    if baseline in single or len(usable) < 2:
        raise ConfigError(
            f"need at least two groups of {by!r} with two or more runs each to compare "
            f"(runs per group: {', '.join(f'{k}={s.n}' for k, s in summaries.items())}); "
            "record more seeds or choose another key"
        )
    pairs_to_test = (
        [(name, baseline) for name in usable if name != baseline]
        if baseline is not None
        else list(combinations(usable, 2))
    )
    rows = [_compare_groups(groups[a], groups[b], a, b, paired, warnings) for a, b in pairs_to_test]
    method = correction if correction != "auto" else ("holm" if len(rows) <= HOLM_MAX else "bh")
    for row, p in zip(rows, adjust_pvalues([r.primary_p for r in rows], method), strict=True):
        row.p_adjusted, row.correction = float(p), method
    warnings += _small_n_warnings(rows)
    return ComparisonReport(
        by=by, metric=metric, baseline=baseline, groups=summaries, rows=rows, warnings=warnings, excluded=excluded
    )


def _compare_groups(
    a: list[Run], b: list[Run], name_a: str, name_b: str, paired: bool, warnings: list[str]
) -> ComparisonRow:
    seeds_a, seeds_b = [r.seed for r in a], [r.seed for r in b]
    pairs = None
    if paired:
        if len(set(seeds_a)) < len(seeds_a) or len(set(seeds_b)) < len(seeds_b):
            raise ConfigError(f"--paired needs one run per seed, but {name_a} or {name_b} repeats a seed")
        common = sorted(set(seeds_a) & set(seeds_b))
        if len(common) < 2:
            raise ConfigError(
                f"--paired: {name_a} and {name_b} share {len(common)} seed(s); pairing needs "
                "two or more (record the same seeds in both groups)"
            )
        if len(common) < max(len(a), len(b)):
            warnings.append(f"{name_a} vs {name_b}: paired tests use the {len(common)} shared seeds only")
        va, vb = {r.seed: r.value for r in a}, {r.seed: r.value for r in b}
        pairs = (np.array([va[s] for s in common]), np.array([vb[s] for s in common]))
    elif sorted(seeds_a) == sorted(seeds_b):
        warnings.append(f"{name_a} and {name_b} have the same seeds; --paired tests them seed against seed")
    return compare_values(
        np.array([r.value for r in a]), np.array([r.value for r in b]), name_a=name_a, name_b=name_b, pairs=pairs
    )


def _check_same_split(runs: Sequence[Run], by: str) -> None:
    for key in SPLIT_KEYS:
        if key == by:
            if key == "dataset":
                raise ConfigError(
                    "grouping by dataset compares different tasks, not seeds; "
                    "compare within one dataset at a time (pass one dataset's recordings)"
                )
            continue
        seen: dict[str, int] = {}
        for r in runs:
            value = r.key(key)
            label = "-" if value is MISSING else str(value)
            seen[label] = seen.get(label, 0) + 1
        if len(seen) > 1:
            detail = ", ".join(f"{v} ({c} runs)" for v, c in seen.items())
            if key == "dataset":
                raise ConfigError(f"recordings mix datasets ({detail}); compare one dataset at a time")
            raise ConfigError(
                f"recordings mix {key} ({detail}); compare runs of one dataset and class split "
                f"at a time, or group by {key}"
            )


def _small_n_warnings(rows: Sequence[ComparisonRow]) -> list[str]:
    out = []
    for r in rows:
        floor = min_two_sided_p(r.n_a, r.n_b)
        if floor > 0.05:
            out.append(
                f"{r.a} vs {r.b}: with {r.n_a} vs {r.n_b} runs the permutation and Mann-Whitney tests "
                f"cannot give p < 0.05 (smallest possible p = {floor:.3g}); record more seeds"
            )
        if r.paired and 2.0 / 2**r.n_pairs > 0.05:
            out.append(
                f"{r.a} vs {r.b}: with {r.n_pairs} pairs the Wilcoxon test cannot give p < 0.05 "
                f"(smallest possible p = {2.0 / 2**r.n_pairs:.3g})"
            )
    if any(min(r.n_a, r.n_b) <= 5 for r in rows):
        out.append(
            "bootstrap intervals under-cover at n <= 5 runs per group: read the P(improve) intervals as optimistic"
        )
    return out


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
