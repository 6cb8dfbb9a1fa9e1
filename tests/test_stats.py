"""Statistics across seeds against independent oracles: scipy.stats, itertools enumeration, h5py reads."""

from __future__ import annotations

import math
from itertools import combinations

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from synthetic import write_group

from analyses import stats as ws_stats
from analyses.stats import adjust_pvalues, compare, compare_values
from workstation.render import comparison_csv, comparison_markdown

A = [0.712, 0.735, 0.701, 0.744]
B = [0.690, 0.702, 0.671, 0.699]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs")
    paths = write_group(d, "gated", [1, 2, 3, 4], A, behaviour="adaptive", n_steps=300)
    paths += write_group(d, "plain", [1, 2, 3, 4], B, behaviour="none", n_steps=300)
    return d, paths


def _brute_permutation_p(a, b):
    pooled = np.concatenate([a, b])
    observed = abs(np.mean(a) - np.mean(b))
    hits = total = 0
    for idx in combinations(range(len(pooled)), len(a)):
        mask = np.zeros(len(pooled), bool)
        mask[list(idx)] = True
        hits += abs(pooled[mask].mean() - pooled[~mask].mean()) >= observed * (1 - 1e-12)
        total += 1
    return hits / total


def test_group_values_and_summaries_match_the_files_and_scipy(runs):
    d, paths = runs
    report = compare([d], "variant", "final_hm", baseline="plain")
    g = report.groups["gated"]
    with h5py.File(paths[0], "r") as f:
        assert g.values[0] == pytest.approx(f["eval/hm"][-1])
    assert g.seeds == [1, 2, 3, 4] and g.values == pytest.approx(A)
    low, high = stats.t.interval(0.95, 3, loc=np.mean(A), scale=stats.sem(A))
    assert (g.ci_low, g.ci_high) == pytest.approx((low, high))
    assert g.std == pytest.approx(np.std(A, ddof=1))
    assert g.iqm == pytest.approx(np.mean(sorted(A)[1:3]))


def test_unpaired_comparison_matches_scipy_and_brute_force(runs):
    d, _ = runs
    row = compare([d], "variant", "final_hm", baseline="plain").rows[0]
    a, b = np.array(A), np.array(B)
    assert (row.a, row.b, row.mean_diff) == ("gated", "plain", pytest.approx(a.mean() - b.mean()))
    welch = stats.ttest_ind(a, b, equal_var=False)
    assert (row.welch_t, row.welch_p) == pytest.approx((welch.statistic, welch.pvalue))
    assert row.perm_resamples is None and row.perm_p == pytest.approx(_brute_permutation_p(a, b))
    mwu = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
    assert (row.mwu_u, row.mwu_p) == pytest.approx((mwu.statistic, mwu.pvalue))
    assert row.prob_improvement == pytest.approx(np.mean([[x > y for y in b] for x in a]))
    assert row.pi_low <= row.prob_improvement <= row.pi_high and 0 <= row.pi_low and row.pi_high <= 1
    nu = 6
    j = math.gamma(nu / 2) / (math.sqrt(nu / 2) * math.gamma((nu - 1) / 2))
    pooled = math.sqrt((3 * np.var(a, ddof=1) + 3 * np.var(b, ddof=1)) / nu)
    assert row.hedges_g == pytest.approx(j * (a.mean() - b.mean()) / pooled)
    assert row.correction == "holm" and row.p_adjusted == pytest.approx(row.welch_p)  # one comparison


def test_paired_comparison_matches_scipy(runs):
    d, _ = runs
    row = compare([d], "variant", "final_hm", baseline="plain", paired=True).rows[0]
    rel, wil = stats.ttest_rel(A, B), stats.wilcoxon(A, B)
    assert row.paired and row.n_pairs == 4
    assert (row.paired_t, row.paired_p) == pytest.approx((rel.statistic, rel.pvalue))
    assert (row.wilcoxon_w, row.wilcoxon_p) == pytest.approx((wil.statistic, wil.pvalue))
    assert row.p_adjusted == pytest.approx(rel.pvalue)


def test_monte_carlo_permutation_states_its_count_and_agrees_with_enumeration(monkeypatch):
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.3, 1, 9), rng.normal(0, 1, 9)
    monkeypatch.setattr(ws_stats, "EXACT_LIMIT", 1000)
    row = compare_values(a, b)
    assert row.perm_resamples == ws_stats.MONTE_CARLO_RESAMPLES
    assert row.perm_p == pytest.approx(_brute_permutation_p(a, b), abs=0.012)


def test_holm_and_bh_on_a_hand_computed_example():
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(adjust_pvalues(p, "holm"), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(adjust_pvalues(p, "bh"), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(adjust_pvalues([0.2, math.nan, 0.01], "holm"), [0.2, math.nan, 0.02])


@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_adjusted_pvalues_are_bounded_ordered_and_bh_is_less_strict(p):
    holm, bh = adjust_pvalues(p, "holm"), adjust_pvalues(p, "bh")
    raw = np.asarray(p)
    assert np.all(raw <= holm + 1e-12) and np.all(raw <= bh + 1e-12)
    assert np.all(holm <= 1) and np.all(bh <= holm + 1e-12)
    order = np.argsort(raw, kind="stable")
    assert np.all(np.diff(holm[order]) >= -1e-12) and np.all(np.diff(bh[order]) >= -1e-12)


quarters = st.lists(st.integers(-40, 40), min_size=3, max_size=6).map(lambda xs: np.array(xs) / 4.0)


@settings(max_examples=40, deadline=None)
@given(quarters, quarters, st.integers(-8, 8))
def test_swapping_groups_flips_effects_and_a_shift_changes_nothing(a, b, c):
    if np.ptp(np.concatenate([a, b])) == 0:
        return
    ab, ba, shifted = compare_values(a, b), compare_values(b, a), compare_values(a + c, b + c)
    assert ba.mean_diff == pytest.approx(-ab.mean_diff)
    assert ba.welch_t == pytest.approx(-ab.welch_t, nan_ok=True)
    assert ba.hedges_g == pytest.approx(-ab.hedges_g, nan_ok=True)
    assert ba.prob_improvement == pytest.approx(1 - ab.prob_improvement)
    for name in ("welch_p", "perm_p", "mwu_p"):
        assert getattr(ba, name) == pytest.approx(getattr(ab, name), nan_ok=True)
    unchanged = ("mean_diff", "welch_p", "perm_p", "mwu_p", "hedges_g", "prob_improvement", "pi_low", "pi_high")
    for name in unchanged:
        assert getattr(shifted, name) == pytest.approx(getattr(ab, name), nan_ok=True, abs=1e-9)


@settings(max_examples=8, deadline=None)
@given(st.data())
def test_results_do_not_depend_on_file_order(runs, data):
    _, paths = runs
    shuffled = data.draw(st.permutations(paths))
    expected = compare(paths, "variant", "final_hm").to_dict()
    assert compare(shuffled, "variant", "final_hm").to_dict() == expected


def test_small_n_is_said_in_plain_words(tmp_path):
    write_group(tmp_path, "x", [1, 2, 3], [0.7, 0.72, 0.71], behaviour="none", n_steps=50)
    write_group(tmp_path, "y", [1, 2, 3], [0.6, 0.62, 0.61], behaviour="none", n_steps=50)
    report = compare([tmp_path], "variant", "final_hm", paired=True)
    text = " ".join(report.warnings)
    assert "3 vs 3" in text and "cannot give p < 0.05" in text and "0.1)" in text
    assert "3 pairs the Wilcoxon" in text
    row = report.rows[0]
    assert row.perm_p == pytest.approx(0.1) and row.mwu_p == pytest.approx(0.1)


def test_five_pairs_cannot_reach_significance_with_wilcoxon():
    row = compare_values(np.arange(5.0) + 1, np.zeros(5), pairs=(np.arange(5.0) + 1, np.zeros(5)))
    assert row.wilcoxon_p == pytest.approx(0.0625)
    assert any("5 pairs" in w for w in ws_stats._small_n_warnings([row]))


def test_report_renders_as_csv_and_markdown(runs):
    d, _ = runs
    report = compare([d], "variant", "final_hm", baseline="plain")
    csv_text = comparison_csv(report).splitlines()
    assert csv_text[0].startswith("a,b,n_a,n_b,mean_a") and csv_text[1].startswith("gated,plain,4,4")
    md = comparison_markdown(report)
    assert "| gated | 4 | 1, 2, 3, 4 |" in md and "gated vs plain" in md
