"""``ws plot``: figures are written, curves are the seed means of the recorded data, bad input is one line."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from synthetic import GATES, write_group
from typer.testing import CliRunner

from analyses.figures import KINDS, run_curve
from recorders.errors import WsError
from recorders.recording_format import Recording
from workstation.cli import app


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("plot")
    write_group(d, "adaptive", [1, 2], [0.7, 0.72], behaviour="adaptive", gate_kind="instance", n_steps=400)
    write_group(d, "collapsed", [1, 2], [0.6, 0.62], n_steps=400)
    return d


@pytest.mark.parametrize("kind", KINDS)
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
        np.testing.assert_allclose(run_curve(rec, "variance")[1], (std ** 2).mean(axis=1), rtol=1e-6)
        np.testing.assert_allclose(run_curve(rec, "accuracy")[1], hm)


@pytest.mark.parametrize(("args", "needle"), [
    (["--kind", "nope", "--out", "x.png"], "use one of gates, ratio"),
    (["--kind", "gates", "--out", "x.gif"], "unsupported figure format"),
    (["--kind", "gates", "--out", "x.png", "--by", "nokey"], "keys that exist"),
])
def test_bad_input_is_a_one_line_error(runs, tmp_path, args, needle):
    args = [a if not a.startswith("x.") else str(tmp_path / a) for a in args]
    result = CliRunner().invoke(app, ["plot", str(runs), *args])
    assert isinstance(result.exception, WsError) and needle in str(result.exception)
