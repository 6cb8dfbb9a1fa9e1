"""``ws plot``: figures are written, curves are the seed means of the recorded data, bad input is one line."""

from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
from synthetic import GATES, write_group, write_two_gate_sets
from typer.testing import CliRunner

from analyses.figures import KINDS, run_curve, run_curves
from recorders.format import FACTOR_SERIES, Recording
from recorders.format.errors import WsError
from workstation.cli import app


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("plot")
    write_group(d, "adaptive", [1, 2], [0.7, 0.72], behaviour="adaptive", gate_kind="instance", n_steps=400)
    write_group(d, "collapsed", [1, 2], [0.6, 0.62], n_steps=400)
    return d


@pytest.mark.parametrize("kind", [k for k in KINDS if k != "factors"])  # synthetic runs predate the factors
def test_each_kind_writes_a_png(runs, tmp_path, kind):
    out = tmp_path / f"{kind}.png"
    result = CliRunner().invoke(app, ["plot", str(runs), "--kind", kind, "--out", str(out), "--by", "variant"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pdf_output(runs, tmp_path):
    out = tmp_path / "fig.pdf"
    assert CliRunner().invoke(app, ["plot", str(runs), "--kind", "ratio", "--out", str(out)]).exit_code == 0
    assert out.read_bytes().startswith(b"%PDF")


def test_curves_are_the_recorded_series(runs):
    path = runs / "adaptive-s1.h5"
    with h5py.File(path, "r") as f:
        value = f[f"gates/{GATES}/value"][:].astype(np.float64)
        std = f[f"gates/{GATES}/value_std"][:].astype(np.float64)
        hm = f["eval/hm"][:]
    with Recording.open(path) as rec:
        np.testing.assert_allclose(run_curve(rec, "gates")[1], value.mean(axis=1), rtol=1e-9)
        np.testing.assert_allclose(run_curve(rec, "variance")[1], (std**2).mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(run_curve(rec, "accuracy")[1], hm)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--kind", "nope", "--out", "x.png"], "use one of gates, ratio"),
        (["--kind", "gates", "--out", "x.gif"], "unsupported figure format"),
        (["--kind", "gates", "--out", "x.png", "--by", "nokey"], "keys that exist"),
    ],
)
def test_bad_input_is_a_one_line_error(runs, tmp_path, args, needle):
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    result = CliRunner().invoke(app, ["plot", str(runs), *args])
    assert isinstance(result.exception, WsError) and needle in str(result.exception)


def test_a_named_gate_set_is_drawn_from_its_own_datasets(tmp_path):
    path = tmp_path / "two.h5"
    write_two_gate_sets(path)
    with h5py.File(path, "r") as f:
        value = f["gates/depth_gates/value"][:].astype(np.float64)
        grad = f["gates/depth_gates/grad"][:].astype(np.float64)
        prompt = f["prompts/ctx/grad_norm"][:].astype(np.float64)
        first_value = f["gates/length_gates_0/value"][:].astype(np.float64)
    with Recording.open(path) as rec:
        gates = run_curve(rec, "gates", gate_set="depth_gates")[1]
        np.testing.assert_allclose(gates, value.mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(run_curve(rec, "gates")[1], first_value.mean(axis=1), rtol=1e-6)
        assert np.abs(gates - first_value.mean(axis=1)).min() > 0.1  # the two sets really differ
        ratio = run_curve(rec, "ratio", gate_set="depth_gates")[1]
        np.testing.assert_allclose(ratio, np.abs(grad).mean(axis=1) / prompt.mean(axis=1), rtol=1e-5)
        assert np.median(ratio) > 10 * np.median(run_curve(rec, "ratio")[1])
        variance = run_curve(rec, "variance", gate_set="depth_gates")[1]
        window = 100  # CollapseThresholds().window_steps at stride 1
        want = [value[i - window + 1 : i + 1].var(axis=0).mean() for i in range(window - 1, len(value))]
        np.testing.assert_allclose(variance[window - 1 :], want, rtol=1e-6)
        np.testing.assert_allclose(run_curve(rec, "accuracy", gate_set="nope")[1], [])  # accuracy ignores it


def test_plot_draws_the_named_gate_set(tmp_path):
    path = tmp_path / "two.h5"
    write_two_gate_sets(path)
    out = tmp_path / "depth.svg"
    result = CliRunner().invoke(
        app, ["plot", str(path), "--kind", "gates", "--gate-set", "depth_gates", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "depth_gates" in out.read_text()  # the y label names the set


def test_a_missing_gate_set_is_one_line_exit_2(tmp_path):
    path = tmp_path / "two.h5"
    write_two_gate_sets(path)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "workstation",
            "plot",
            str(path),
            "--kind",
            "ratio",
            "--gate-set",
            "ctx_gates",
            "--out",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert str(path) in line and "'ctx_gates'" in line and "length_gates_0, depth_gates" in line
    assert not (tmp_path / "x.png").exists()


def test_factors_and_movement_curves_are_the_recorded_series(demo_recording, runs, tmp_path):
    """``factors``: geometric means over gates of the recorded factors and of their product; ``movement``: the
    decay-only replay and the rest (analyses.mechanism); a recording without the factor series cannot draw them."""
    with Recording.open(demo_recording) as rec:
        curves = run_curves(rec, "factors", gate_set="ctx_gates")
        recorded = [rec.read(f"gates/ctx_gates/{k}").astype(np.float64) for k in FACTOR_SERIES[:3]]
        movement = run_curves(rec, "movement", gate_set="instance_gates")
    for label, values in zip(("1−σ", "‖u‖", "|cos|"), recorded, strict=True):
        np.testing.assert_allclose(curves[label][1], np.exp(np.log(values).mean(axis=1)), rtol=1e-9)
    np.testing.assert_allclose(curves["ratio"][1], np.exp(np.log(np.prod(recorded, axis=0)).mean(axis=1)), rtol=1e-9)
    assert set(movement) == {"decay", "rest", "weight decay", "weight rest"}
    assert np.all(movement["weight decay"][1][1:] > 0)  # the demo decays its instance gate's weights
    out = tmp_path / "factors.png"
    result = CliRunner().invoke(app, ["plot", str(demo_recording), "--kind", "factors", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = CliRunner().invoke(app, ["plot", str(runs), "--kind", "factors", "--out", str(tmp_path / "x.png")])
    assert isinstance(result.exception, WsError) and "predates" in str(result.exception)


def test_out_into_a_directory_under_a_file_or_read_only_is_one_line(runs, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.png").mkdir()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    cases = [
        (tmp_path / "adir.png", "is a directory"),
        (tmp_path / "afile" / "x.png", "is a file, not a directory"),
    ]
    if os.access(locked, os.W_OK) is False:  # root writes anywhere; a read-only mount is tested in test_safety
        cases.append((locked / "x.png", "cannot write in"))
    for out, needle in cases:
        result = CliRunner().invoke(app, ["plot", str(runs), "--kind", "gates", "--out", str(out)])
        assert isinstance(result.exception, WsError) and needle in str(result.exception), result.output
        assert "\n" not in str(result.exception)
