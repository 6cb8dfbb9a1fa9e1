"""Collapse diagnostics against independent computations: h5py reads of the file, torch.optim.SGD replays."""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
from synthetic import GATES, cosine_lr, write_run

from analyses.diagnostics import CollapseThresholds, decay_only_factor, diagnose
from analyses.verdict import VerdictThresholds
from recorders.format import GroupSpec, Recording


def _diagnose(path, **kwargs):
    with Recording.open(path) as rec:
        return diagnose(rec, **kwargs)


def test_collapsed_gates_get_a_collapsed_verdict_with_the_ratio_read_independently(tmp_path):
    path = write_run(tmp_path / "c.h5", behaviour="collapsed", n_steps=1200)
    d = _diagnose(path).gate_sets[GATES]
    with h5py.File(path, "r") as f:
        grad = f[f"gates/{GATES}/grad"][:].astype(np.float64)
        prompt = f["prompts/ctx/grad_norm"][:].astype(np.float64)
    expected = np.abs(grad).mean(axis=1) / prompt.mean(axis=1)
    assert d.verdict == "collapsed"
    assert d.onset_step == 0
    assert d.ratio_source == "prompt:ctx"
    np.testing.assert_allclose(d.ratio, expected, rtol=1e-6)
    assert d.phases["late"] == pytest.approx(np.median(expected[800:]), rel=1e-6)
    assert d.evidence is not None and d.evidence.criteria[0].holds is False  # the counterfactuals change nothing


def test_collapsed_gate_movement_is_all_weight_decay(tmp_path):
    path = write_run(tmp_path / "c.h5", behaviour="collapsed", n_steps=1500, init_logit=3.0)
    d = _diagnose(path).gate_sets[GATES]
    assert np.all(d.displacement < 0)
    np.testing.assert_allclose(d.decay_displacement, d.displacement, rtol=1e-4)
    assert np.abs(d.grad_displacement).max() < 1e-5


@pytest.mark.parametrize("kind", ["length", "instance"])
def test_adaptive_gates_get_an_adaptive_verdict(tmp_path, kind):
    d = _diagnose(write_run(tmp_path / "a.h5", behaviour="adaptive", gate_kind=kind)).gate_sets[GATES]
    assert d.verdict == "adaptive", d.reasons
    assert d.onset_step is None
    assert d.evidence is not None and d.evidence.criteria[0].name == "functional" and d.evidence.criteria[0].holds
    if kind == "instance":
        assert d.value_std_inputs is not None and d.reasons["late_input_std"] == pytest.approx(0.1, rel=1e-6)


def test_instance_gates_collapse_when_their_variance_across_inputs_vanishes(tmp_path):
    d = _diagnose(write_run(tmp_path / "i.h5", behaviour="collapsed", gate_kind="instance", onset_step=500)).gate_sets[
        GATES
    ]
    assert d.verdict == "collapsed", d.evidence
    assert d.reasons["spread_growth"] < CollapseThresholds().verdict.spread_growth_min


@pytest.mark.parametrize(("n_steps", "onset", "max_points"), [(2000, 700, 4096), (30000, 11000, 512)])
def test_onset_is_found_within_the_documented_tolerance(tmp_path, n_steps, onset, max_points):
    th = CollapseThresholds()
    window = n_steps // th.verdict.windows  # the onset grid scales with the run
    d = _diagnose(
        write_run(tmp_path / "o.h5", behaviour="collapsed", n_steps=n_steps, onset_step=onset),
        thresholds=th,
        max_points=max_points,
    )
    g = d.gate_sets[GATES]
    assert d.stride == -(-n_steps // max_points)
    assert len(g.steps) <= max_points
    assert g.onset_step is not None and abs(g.onset_step - onset) <= window
    assert g.verdict == "collapsed"


def test_stricter_thresholds_turn_a_collapse_into_no_onset(tmp_path):
    path = write_run(tmp_path / "c.h5", behaviour="collapsed")
    strict = VerdictThresholds(movement_min=0.0, sign_quantile=0.0)  # any movement, any gradient counts
    d = _diagnose(path, thresholds=CollapseThresholds(verdict=strict)).gate_sets[GATES]
    assert d.onset_step is None and d.verdict == "inconclusive"


@pytest.mark.parametrize(
    ("momentum", "dampening", "nesterov", "lr_scale"),
    [(0.0, 0.0, False, 1.0), (0.9, 0.0, False, 50.0), (0.9, 0.1, False, 1.0), (0.8, 0.0, True, 2.0)],
)
def test_decay_only_factor_matches_torch_sgd_with_a_zero_gradient(momentum, dampening, nesterov, lr_scale):
    torch = pytest.importorskip("torch")
    lr = cosine_lr(400, 0.01)
    group = GroupSpec(
        "gates",
        "gate",
        3,
        lr_scale=lr_scale,
        weight_decay=5e-3,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
    )
    p = torch.nn.Parameter(torch.tensor([3.0, -1.0, 0.5], dtype=torch.float64))
    opt = torch.optim.SGD([p], lr=1.0, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=5e-3)
    for eta in lr:
        opt.param_groups[0]["lr"] = float(eta) * lr_scale
        p.grad = torch.zeros_like(p)
        opt.step()
    expected = p.detach().numpy() / np.array([3.0, -1.0, 0.5])
    np.testing.assert_allclose(decay_only_factor(lr, group), expected, rtol=1e-12)


def test_saturation_l_eff_and_distance_match_the_stored_values(tmp_path):
    path = write_run(tmp_path / "a.h5", behaviour="adaptive", init_logit=2.0)
    d = _diagnose(path).gate_sets[GATES]
    with h5py.File(path, "r") as f:
        value = f[f"gates/{GATES}/value"][:].astype(np.float64)
        logit = f[f"gates/{GATES}/logit"][:].astype(np.float64)
    np.testing.assert_allclose(d.l_eff, value.sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(d.saturated_fraction, ((value < 0.05) | (value > 0.95)).mean(axis=1))
    np.testing.assert_allclose(d.distance_from_init, np.abs(logit - 2.0).mean(axis=1), rtol=1e-9)
    np.testing.assert_allclose(d.displacement, logit[-1] - 2.0, rtol=1e-9)
    np.testing.assert_allclose(d.value_variance_time, value.var(axis=0), rtol=1e-9)


def test_recordings_without_gates_get_the_non_gate_diagnostics(tmp_path):
    path = write_run(tmp_path / "n.h5", behaviour="none", final=(0.9, 0.6))
    d = _diagnose(path)
    with h5py.File(path, "r") as f:
        hm = f["eval/hm"][:]
        loss = f["steps/loss/total"][-1]
    assert d.gate_sets == {}
    assert d.final_eval is not None and d.final_eval["hm"] == pytest.approx(hm[-1])
    assert d.best_eval is not None and d.best_eval["hm"] == pytest.approx(hm.max()) and hm.max() > hm[-1]
    assert d.final_loss == pytest.approx(float(loss))
    assert set(d.group_grad_late) == {"ctx"}


def test_to_dict_is_json_and_series_are_optional(tmp_path):
    d = _diagnose(write_run(tmp_path / "c.h5", behaviour="collapsed", status="running"))
    assert d.status == "running"
    brief = json.loads(json.dumps(d.to_dict()))
    full = json.loads(json.dumps(d.to_dict(series=True)))
    gate = brief["gate_sets"][GATES]
    assert gate["verdict"] == "collapsed" and "ratio" not in gate and gate["final"]["l_eff"] > 0
    assert len(full["gate_sets"][GATES]["ratio"]) == d.n_steps


def test_ws_inspect_reports_verdicts_in_json_and_table(tmp_path):
    from typer.testing import CliRunner

    from workstation.cli import app

    write_run(tmp_path / "c.h5", behaviour="collapsed", onset_step=300)
    write_run(tmp_path / "a.h5", behaviour="adaptive")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    verdicts = {
        s["path"].rsplit("/", 1)[-1]: s["diagnostics"]["gate_sets"][GATES]["verdict"] for s in json.loads(result.stdout)
    }
    assert verdicts == {"a.h5": "adaptive", "c.h5": "collapsed"}
    table = CliRunner().invoke(app, ["inspect", str(tmp_path / "c.h5")])
    assert table.exit_code == 0 and "collapsed" in table.output


def test_a_gate_never_measured_gives_nan_reasons_without_numpy_warnings(tmp_path):
    """A gate set whose logits are missing (NaN) at every step, as in a run's first rows: its reasons are NaN,
    not a RuntimeWarning from an all-NaN reduction on the user's terminal."""
    path = write_run(tmp_path / "r.h5", n_steps=50)
    with h5py.File(path, "r+") as f:
        for series in ("logit", "value", "dsigmoid", "grad"):
            f[f"gates/{GATES}/{series}"][...] = np.nan
    with Recording.open(path) as rec, warnings.catch_warnings():
        warnings.simplefilter("error")
        reasons = diagnose(rec).gate_sets[GATES].reasons
    assert np.isnan(reasons["max_grad_displacement"])
