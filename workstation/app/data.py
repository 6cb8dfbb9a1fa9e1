"""What the viewer draws, read lazily from a recording: per-column summaries, gate rows, events.

Numpy-only (no Textual), so it is tested and benchmarked on its own. Nothing here reads a whole matrix series:
a plot of ``width`` screen columns reads at most ``width × samples_per_column`` rows (strided when the run is
longer), a heatmap reads about one row per column, and the cursor reads one row.

The x axis of every plot is the *row index* of the recording (row ``i`` is step ``steps/step[i]``); column ``c``
of a ``width``-column plot covers rows ``[c·n/width, (c+1)·n/width)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recorders.format import (
    EPOCH,
    Event,
    Recording,
    gate_path,
    grad_norm_path,
    loss_path,
)
from recorders.format.errors import RecordingError
from workstation.safe_text import clean

SAMPLES_PER_COLUMN = 64
# Diagnose in a child process above this many recorded gate values (rows × gates): on 100k × 1,024 the
# diagnostics' numpy work holds the GIL for up to ~250 ms at a time, which would stall the cursor.
PROCESS_CELLS = 1 << 22


@dataclass(frozen=True)
class Columns:
    """One series summarised per screen column: ``lo``, ``hi``, ``last`` are ``(width,)`` float64.

    ``lo``/``hi`` are the NaN-ignoring min/max of the samples in the column, ``last`` the latest sample in it.
    A column without samples repeats the previous column's ``last`` (NaN before the first sample); a column whose
    samples are all NaN is NaN.
    """

    lo: np.ndarray
    hi: np.ndarray
    last: np.ndarray

    @property
    def width(self) -> int:
        return len(self.last)


def column_of(row: int | np.ndarray, n_rows: int, width: int) -> np.ndarray:
    """Screen column of row index ``row`` in a ``width``-column plot of ``n_rows`` rows."""
    return np.clip(np.asarray(row, dtype=np.int64) * width // max(n_rows, 1), 0, max(width - 1, 0))


def row_of_column(column: int, n_rows: int, width: int) -> int:
    """Last row index shown in ``column`` (the inverse of :func:`column_of`, used for mouse clicks)."""
    if n_rows <= 0:
        return 0
    stop = math.ceil((column + 1) * n_rows / max(width, 1))
    return int(min(max(stop - 1, 0), n_rows - 1))


def downsample(values: np.ndarray, positions: np.ndarray, n_rows: int, width: int) -> Columns:
    """Summarise samples ``values (k,)`` taken at sorted row indices ``positions (k,)`` into ``width`` columns."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi, last = (np.full(width, np.nan) for _ in range(3))
    if len(values) == 0 or width <= 0:
        return Columns(lo, hi, last)
    cols = column_of(positions, n_rows, width)
    starts = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]])
    present = cols[starts]
    lo[present] = np.fmin.reduceat(values, starts)
    hi[present] = np.fmax.reduceat(values, starts)
    last[present] = values[np.r_[starts[1:], len(values)] - 1]
    _hold(last, present)
    held = np.isnan(lo) & ~np.isnan(last)
    lo[held] = hi[held] = last[held]
    return Columns(lo, hi, last)


def _hold(a: np.ndarray, present: np.ndarray) -> None:
    """Fill, in place along the last axis, each column not in sorted ``present`` with the previous ``last`` value
    (a step function: sparse series stay continuous); columns before the first present one stay as they are."""
    width = a.shape[-1]
    has = np.zeros(width, dtype=bool)
    has[present] = True
    source = np.maximum.accumulate(np.where(has, np.arange(width), 0))
    fill = ~has & (np.arange(width) > present[0])
    a[..., fill] = a[..., source[fill]]


def read_columns(
    rec: Recording, path: str, width: int, n_rows: int | None = None, samples_per_column: int = SAMPLES_PER_COLUMN
) -> Columns:
    """Per-column summary of the scalar per-step series ``path`` over the first ``n_rows`` committed rows.

    Reads every row when there are at most ``samples_per_column`` rows per column, else every ``stride``-th row.
    """
    n = rec.n_steps if n_rows is None else min(n_rows, rec.n_steps)
    stride = max(1, math.ceil(n / max(width * samples_per_column, 1)))
    values = rec.read(path, 0, n, stride)
    return downsample(values, np.arange(len(values)) * stride, n, width)


def heatmap(
    rec: Recording, gate_set: str, width: int, gate_bins: int, series: str = "value", n_rows: int | None = None
) -> np.ndarray:
    """Gate × step matrix ``(bins, width)`` of ``gates/<gate_set>/<series>``: about one row read per column.

    Rows are read every ``n // width``; each column shows its last sampled row; gates are averaged into
    ``bins = min(n_gates, gate_bins)`` contiguous bins.
    """
    n = rec.n_steps if n_rows is None else min(n_rows, rec.n_steps)
    n_gates = rec.gate_sets[gate_set].n_gates
    bins = max(1, min(n_gates, gate_bins))
    out = np.full((bins, width), np.nan)
    if n == 0 or width <= 0:
        return out
    stride = max(1, n // width)
    data = rec.read(gate_path(gate_set, series), 0, n, stride).astype(np.float64)
    edges = np.linspace(0, n_gates, bins + 1).astype(np.int64)
    binned = np.add.reduceat(data, edges[:-1], axis=1) / np.diff(edges)
    cols = column_of(np.arange(len(data)) * stride, n, width)
    last = np.r_[np.flatnonzero(cols[1:] != cols[:-1]), len(cols) - 1]  # each column's last sample
    out[:, cols[last]] = binned[last].T
    _hold(out, cols[last])
    return out


@dataclass(frozen=True)
class Marker:
    """A point of interest on the timeline: ``row`` index, its ``step``, ``kind`` and a one-line ``label``."""

    row: int
    step: int
    kind: str
    label: str


@dataclass
class RunData:
    """A recording opened for viewing: names of what to plot, and cheap reads for the cursor.

    ``n_rows`` is the committed row count when last refreshed; all methods are safe to call from worker threads
    (h5py serialises file access).
    """

    rec: Recording
    n_rows: int = 0
    extra_markers: list[Marker] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.n_rows = self.rec.n_steps

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunData:
        """Open a recording; raises :class:`~recorders.format.errors.RecordingError` for anything unreadable.

        ``Recording.open`` turns every HDF5 error into one, so a bad file never takes the viewer down; a file
        damaged only in part opens, with :attr:`unreadable` naming the parts.
        """
        return cls(Recording.open(path))

    @property
    def title(self) -> str:
        rec = self.rec
        variant = rec.config.get("variant") or ""
        return clean(" · ".join(str(x) for x in (rec.method, variant, rec.dataset, f"seed {rec.seed}") if x))

    @property
    def loss_paths(self) -> dict[str, str]:
        return {term: loss_path(term) for term in self.rec.loss_terms}

    @property
    def grad_paths(self) -> dict[str, str]:
        return {name: grad_norm_path(name) for name in self.rec.groups}

    @property
    def gate_sets(self) -> list[str]:
        return list(self.rec.gate_sets)

    def refresh(self) -> bool:
        """Follow a growing file; returns True when new rows arrived."""
        old = self.n_rows
        self.n_rows = self.rec.refresh()
        return self.n_rows != old

    def step_at(self, row: int) -> int:
        """The step of ``row`` (0 when there are no rows or the row is unreadable)."""
        with contextlib.suppress(RecordingError):
            return int(self.rec.row("steps/step", row)) if self.n_rows else 0
        return 0

    def epoch_at(self, row: int) -> int:
        """The epoch of ``row`` (0 when there are no rows or ``steps/epoch`` is damaged)."""
        with contextlib.suppress(RecordingError):
            return int(self.rec.row(EPOCH, row)) if self.n_rows else 0
        return 0

    def row_of_step(self, step: int) -> int:
        return min(self.rec.row_of_step(step), max(self.n_rows - 1, 0))

    def rows_of_steps(self, steps: np.ndarray) -> np.ndarray:
        """Row index of each step in sorted ``steps (k,)``: the last row whose step is ≤ it (0 before the first)."""
        rows = np.searchsorted(self.rec.steps(0, self.n_rows), np.asarray(steps), side="right") - 1
        return np.clip(rows, 0, max(self.n_rows - 1, 0))

    def gate_labels(self, gate_set: str) -> tuple[str, ...]:
        """The gate set's labels as the screen may show them (control characters stripped)."""
        return tuple(clean(label) for label in self.rec.gate_sets[gate_set].labels)

    def gate_row(self, gate_set: str, row: int) -> dict[str, np.ndarray]:
        """Gate ``value``, ``dsigmoid``, ``logit`` and ``grad`` at ``row``: each ``(n_gates,)`` float32."""
        return {s: self.rec.row(gate_path(gate_set, s), row) for s in ("value", "dsigmoid", "logit", "grad")}

    def accuracy_columns(self, width: int) -> dict[str, Columns]:
        """Evaluations (``base``, ``novel``, ``hm`` in [0, 1]) placed at the rows of their steps."""
        table = self.rec.eval_table()
        if not len(table["step"]) or not self.n_rows:
            return {}
        rows = np.array([self.row_of_step(int(s)) for s in table["step"]])
        order = np.argsort(rows, kind="stable")
        return {
            name: downsample(table[key][order], rows[order], self.n_rows, width)
            for name, key in (("base", "base_acc"), ("novel", "novel_acc"), ("hm", "hm"))
        }

    def markers(self) -> list[Marker]:
        """Recorded events (epoch ends, non-finite values, collapse onsets, notes) and :attr:`extra_markers`."""
        try:
            events: list[Event] = self.rec.events()
        except RecordingError:  # a damaged events part: the file's summary names it; the markers go without
            events = []
        out = [Marker(self.row_of_step(e.step), e.step, clean(e.kind), clean(e.message or e.kind)) for e in events]
        return sorted(out + self.extra_markers, key=lambda m: (m.row, m.kind))

    def diagnose(self) -> Any:
        """The analyses' collapse diagnostics (``analyses.diagnostics.RecordingDiagnostics``) of the committed rows;
        in a separate process when the recording holds more than :data:`PROCESS_CELLS` gate values."""
        cells = self.n_rows * sum(g.n_gates for g in self.rec.gate_sets.values())
        if cells <= PROCESS_CELLS:
            from analyses.diagnostics import diagnose

            return diagnose(self.rec)
        return diagnose_in_subprocess(self.rec.path)

    def final_hm(self) -> float | None:
        try:
            hm = self.rec.eval_table()["hm"]
        except RecordingError:
            return None
        return float(hm[-1]) if len(hm) else None

    @property
    def unreadable(self) -> str:
        """One line naming the damaged parts of the recording ('' when every part reads)."""
        damaged = self.rec.damaged
        return f"unreadable: {', '.join(damaged)} (ws inspect says why)" if damaged else ""


def distinguishing_key(runs: list[RunData]) -> str:
    """The first of ``variant`` (config), ``method``, ``dataset``, ``seed`` whose value differs between every two
    runs, so a figure grouped by it draws one curve per run; ``method`` when none does."""
    for key in ("variant", "method", "dataset", "seed"):
        values = [run.rec.config.get(key) if key == "variant" else getattr(run.rec, key) for run in runs]
        if None not in values and len(set(map(str, values))) == len(runs):
            return key
    return "method"


def diagnose_in_subprocess(path: str | os.PathLike[str]) -> Any:
    """``analyses.diagnostics.diagnose`` of the recording at ``path``, computed by a child Python process.

    A plain subprocess rather than multiprocessing: inside a Textual app ``sys.stderr`` is a capture object,
    which multiprocessing's resource tracker cannot pass to its own child. The child is a module entry point
    (:mod:`workstation.app.diagnose_child`) started with ``-P`` (the working directory is not on its
    ``sys.path``) and ``PYTHONPATH`` set to the folder this ws runs from; it answers in JSON, never pickle.
    Errors in the child (a :class:`~recorders.format.errors.RecordingError` for a bad file) are raised here as
    :class:`~recorders.format.errors.RecordingError`.
    """
    from workstation.app.diagnose_child import decode_diagnostics

    root = Path(__file__).resolve().parents[2]  # the folder holding the workstation package
    env = {**os.environ, "PYTHONPATH": str(root)}
    child = subprocess.run(
        [sys.executable, "-P", "-m", "workstation.app.diagnose_child", os.path.abspath(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        env=env,
    )
    try:
        out = json.loads(child.stdout)
    except ValueError:
        reason = child.stderr.decode(errors="replace").strip().splitlines()[-1:] or [f"exit {child.returncode}"]
        raise RecordingError(f"{path}: the diagnostics process failed ({reason[0]})") from None
    if "error" in out:
        message = str(out["error"])
        raise RecordingError(message if out.get("user_error") else f"{path}: diagnostics failed ({message})")
    return decode_diagnostics(out["diagnostics"])
