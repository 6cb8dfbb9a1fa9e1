"""The viewer's downsampling and lazy reads, against brute-force float64 references and h5py."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from synthetic import GATES, write_run

from recorders.format import Recording
from recorders.format.errors import RecordingError
from workstation.app.data import (
    RunData,
    column_of,
    diagnose_in_subprocess,
    downsample,
    heatmap,
    read_columns,
    row_of_column,
)


def brute_columns(values: np.ndarray, positions: np.ndarray, n_rows: int, width: int):
    """Per-column min/max/last by an explicit loop; empty columns hold the previous column's last value."""
    lo, hi, last = np.full(width, np.nan), np.full(width, np.nan), np.full(width, np.nan)
    previous = np.nan
    for c in range(width):
        inside = [v for p, v in zip(positions, values, strict=True) if p * width // n_rows == c]
        if inside:
            finite = [v for v in inside if not np.isnan(v)]
            lo[c], hi[c] = (min(finite), max(finite)) if finite else (np.nan, np.nan)
            last[c] = previous = inside[-1]
        elif not np.isnan(previous):
            lo[c] = hi[c] = last[c] = previous
    return lo, hi, last


@pytest.mark.parametrize(("n_rows", "width", "k"), [(1000, 37, 1000), (1000, 37, 90), (20, 50, 20), (5, 5, 3)])
def test_downsample_matches_a_loop(n_rows: int, width: int, k: int) -> None:
    rng = np.random.default_rng(n_rows + width + k)
    positions = np.sort(rng.choice(n_rows, size=k, replace=False))
    values = rng.normal(size=k)
    values[rng.random(k) < 0.1] = np.nan  # non-finite values must not poison a column's min/max
    got = downsample(values, positions, n_rows, width)
    for mine, ref in zip((got.lo, got.hi, got.last), brute_columns(values, positions, n_rows, width), strict=True):
        np.testing.assert_array_equal(mine, ref)


def test_row_of_column_inverts_column_of() -> None:
    for n_rows, width in [(1000, 37), (10, 80), (100_000, 200)]:
        for c in range(width):
            row = row_of_column(c, n_rows, width)
            if c * n_rows // width < n_rows and column_of(row, n_rows, width) != c:
                # a column with no row of its own maps to the last row before it
                assert column_of(row, n_rows, width) < c
            assert 0 <= row < n_rows


def test_read_columns_strided_when_long_exact_when_short(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.h5", n_steps=5000, n_gates=4)
    run = RunData.open(str(path))
    with h5py.File(path, "r") as f:
        loss = f["steps/loss/total"][:].astype(np.float64)
    exact = read_columns(run.rec, "steps/loss/total", 40)  # 125 rows a column > 64 samples: every 2nd row
    stride = 2
    ref = brute_columns(loss[::stride], np.arange(0, 5000, stride), 5000, 40)
    np.testing.assert_allclose(exact.lo, ref[0], rtol=1e-6)
    np.testing.assert_allclose(exact.hi, ref[1], rtol=1e-6)
    full = read_columns(run.rec, "steps/loss/total", 100)  # 50 rows a column: every row is read
    np.testing.assert_allclose(full.hi, loss.reshape(100, 50).max(axis=1), rtol=1e-6)
    np.testing.assert_allclose(full.last, loss.reshape(100, 50)[:, -1], rtol=1e-6)


def test_heatmap_reads_about_one_row_per_column(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_run(tmp_path / "r.h5", n_steps=3000, n_gates=6)
    run = RunData.open(str(path))
    reads: list[int] = []
    original = run.rec.read

    def counting(p: str, start: int = 0, stop: int | None = None, stride: int = 1) -> np.ndarray:
        out = original(p, start, stop, stride)
        reads.append(len(out))
        return out

    monkeypatch.setattr(run.rec, "read", counting)
    got = heatmap(run.rec, GATES, width=50, gate_bins=3)
    assert sum(reads) <= 51
    with h5py.File(path, "r") as f:
        value = f[f"gates/{GATES}/value"][:].astype(np.float64)
    for c in range(50):  # stride 3000 // 50 = 60: column c shows row 60·c, its 6 gates averaged in pairs
        expect = value[c * 60].reshape(3, 2).mean(axis=1)
        np.testing.assert_allclose(got[:, c], expect, rtol=1e-6, err_msg=f"column {c}")


def test_gate_row_matches_the_file(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.h5", n_steps=700, n_gates=5)
    run = RunData.open(str(path))
    with h5py.File(path, "r") as f:
        for series in ("value", "dsigmoid", "logit", "grad"):
            np.testing.assert_array_equal(run.gate_row(GATES, 321)[series], f[f"gates/{GATES}/{series}"][321])


def test_diagnose_in_subprocess_equals_diagnose_and_raises_the_childs_errors(tmp_path: Path) -> None:
    from analyses.diagnostics import diagnose

    path = write_run(tmp_path / "r.h5", n_steps=2000, n_gates=6, onset_step=800)
    with Recording.open(path) as rec:
        want = diagnose(rec)
    got = diagnose_in_subprocess(path)
    assert got.gate_sets.keys() == want.gate_sets.keys()
    for name, g in want.gate_sets.items():
        assert got.gate_sets[name].verdict == g.verdict and got.gate_sets[name].onset_step == g.onset_step
        np.testing.assert_array_equal(got.gate_sets[name].ratio, g.ratio)
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an hdf5 file")
    with pytest.raises(RecordingError, match="not an HDF5 file"):
        diagnose_in_subprocess(bad)
