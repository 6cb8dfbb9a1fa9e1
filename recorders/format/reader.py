"""Reading recordings lazily: :class:`Recording` opens, validates and reads row ranges (numpy + h5py only)."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from recorders.format.errors import RecordingError
from recorders.format.schema import (
    EVAL_FIELDS,
    EVENT_SPAN,
    EVENT_STEP,
    EVENT_TEXT,
    FORMAT_NAME,
    SCHEMA_VERSION,
    STATUS_LOG,
    STATUSES,
    STEP,
    GateSetSpec,
    GroupSpec,
    Layout,
    PromptSpec,
    TensorSpec,
    tensor_path,
)


@dataclass(frozen=True)
class Event:
    step: int
    kind: str
    message: str


@dataclass
class Recording:
    """A lazily read recording; works on complete, running (follow with :meth:`refresh`) and killed files.

    Series are read by row range (``read(path, start, stop)``), never whole unless asked. ``n_steps`` is the number
    of committed rows. Raises :class:`~recorders.format.errors.RecordingError` for anything that is not a readable ws
    recording of a supported schema version.
    """

    path: Path
    _file: h5py.File = field(repr=False)
    layout: Layout = field(repr=False)
    n_steps: int = 0
    _step_cache: np.ndarray | None = field(default=None, repr=False)
    _events_cache: list[Event] = field(default_factory=list, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Recording:
        p = Path(path)
        if not p.exists():
            raise RecordingError(f"{p}: no such file; check the path (ws record writes to recordings/ by default)")
        if p.is_dir():
            raise RecordingError(f"{p}: is a directory; pass a .h5 recording inside it")
        try:
            is_hdf5 = h5py.is_hdf5(p)
        except OSError as exc:
            raise RecordingError(f"{p}: cannot be read ({exc.strerror or exc}); check its permissions") from None
        if not is_hdf5:
            raise RecordingError(f"{p}: not an HDF5 file; ws reads .h5 recordings written by `ws record`")
        f = _open_h5(p)
        try:
            layout = _validate(p, f)
            rec = cls(path=p, _file=f, layout=layout)
            rec.refresh()
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            f.close()
            raise _corrupt(p, exc) from None
        except BaseException:
            f.close()
            raise
        return rec

    # ------------------------------------------------------------------ attributes
    @property
    def attrs(self) -> dict[str, Any]:
        return {k: _py(v) for k, v in self._file.attrs.items() if k != "layout"}

    @property
    def status(self) -> str:
        """``running``, ``complete`` or ``failed``; in a live file, read from the status history the writer appends
        to (a SWMR reader cannot see a changed root attribute), else from the ``status`` attribute."""
        f = self._file
        if f.swmr_mode and STATUS_LOG in f:
            try:
                log = _retrying(lambda: _last(f[STATUS_LOG]), True)
            except (OSError, RuntimeError):
                log = None
            if log:
                return log
        return str(_py(f.attrs["status"]))

    @property
    def complete(self) -> bool:
        """True only for a ``complete`` file that is also consistent (see :meth:`inconsistency`)."""
        return self.status == "complete" and not self.inconsistency()

    def inconsistency(self) -> str:
        """Why a file that says ``complete`` cannot be (empty when it is consistent): no ``finished`` time, fewer
        rows than its planned ``total_steps``, or a per-step series shorter than ``steps/step``."""
        if not _py(self._file.attrs.get("finished", "")):
            return "no finished time"
        total = int(self._file.attrs.get("total_steps", 0))
        if total and self.n_steps != total:
            return f"{self.n_steps} rows of {total} planned steps"
        short = [p for p in self.layout.step_series() if self._file[p].shape[0] < self.n_steps]
        return f"{short[0]} is shorter than {STEP}" if short else ""

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self._file.attrs["config"])

    @property
    def method(self) -> str:
        return str(_py(self._file.attrs["method"]))

    @property
    def seed(self) -> int:
        return int(self._file.attrs["seed"])

    @property
    def dataset(self) -> str:
        return str(_py(self._file.attrs.get("dataset", "")))

    @property
    def schema_version(self) -> int:
        return int(self._file.attrs["schema_version"])

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return self.layout.loss_terms

    @property
    def groups(self) -> dict[str, GroupSpec]:
        return {g.name: g for g in self.layout.groups}

    @property
    def gate_sets(self) -> dict[str, GateSetSpec]:
        return {g.name: g for g in self.layout.gate_sets}

    @property
    def prompts(self) -> dict[str, PromptSpec]:
        return {p.name: p for p in self.layout.prompts}

    @property
    def tensors(self) -> dict[str, TensorSpec]:
        return {t.name: t for t in self.layout.tensors}

    def has(self, path: str) -> bool:
        return path in self._file

    # ------------------------------------------------------------------ reading
    def refresh(self) -> int:
        """Re-read lengths of a file that may still be written (SWMR); returns the committed row count.

        A read that races the writer's metadata update is retried; if it keeps failing, the previous count stays
        (the next refresh tries again) instead of raising.
        """
        f = self._file
        try:
            n = _retrying(lambda: _refreshed_length(f), f.swmr_mode)
        except (OSError, RuntimeError):
            if not f.swmr_mode:
                raise
            return self.n_steps
        if n != self.n_steps:
            self._step_cache = None
        self.n_steps = n
        return n

    def _dataset(self, path: str) -> h5py.Dataset:
        try:
            ds = self._file[path]
        except KeyError:
            raise KeyError(f"{self.path}: no series {path!r}") from None
        if self._file.swmr_mode:
            ds.refresh()
        return ds

    def read(self, path: str, start: int = 0, stop: int | None = None, stride: int = 1) -> np.ndarray:
        """Rows ``[start, stop)`` (every ``stride``-th) of a per-step series, clipped to the committed rows.

        A chunk that fails its Fletcher-32 checksum (a damaged file) raises :class:`RecordingError`.
        """
        n = self.n_steps
        stop = n if stop is None else min(max(stop, 0), n)
        start = min(max(start, 0), stop)
        return self._checked(path, lambda ds: ds[start:stop:stride])

    def row(self, path: str, index: int) -> np.ndarray:
        """One row of a per-step series (``index`` counts committed rows; negative counts from the end)."""
        n = self.n_steps
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for {n} committed rows")
        return self._checked(path, lambda ds: ds[index % n])

    def _checked(self, path: str, read: Any) -> Any:
        """``read(dataset)``, retried once in a live file; a read error (a checksum mismatch) becomes one line."""
        ds = self._dataset(path)
        try:
            return _retrying(lambda: read(ds), self._file.swmr_mode)
        except OSError as exc:
            raise RecordingError(
                f"{self.path}: {path} cannot be read ({_reason(exc)}): the file is damaged; restore it from a copy "
                "or re-record the run"
            ) from None

    def steps(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        return self.read(STEP, start, stop)

    def row_of_step(self, step: int) -> int:
        """Index of the last committed row whose step is ≤ ``step`` (0 if ``step`` precedes every row)."""
        if self._step_cache is None:
            self._step_cache = self.steps()
        return max(0, int(np.searchsorted(self._step_cache, step, side="right")) - 1)

    def eval_table(self) -> dict[str, np.ndarray]:
        """Evaluations as columns ``step, epoch, base_acc, novel_acc, hm`` (accuracies in [0, 1])."""
        cols = {name: self._dataset(f"eval/{name}") for name in EVAL_FIELDS}
        n = min(ds.shape[0] for ds in cols.values())
        return {name: ds[:n] for name, ds in cols.items()}

    def events(self) -> list[Event]:
        """Recorded events, oldest first. In a live file, events whose bytes are not all written yet are left
        out (they appear on a later call); a read that keeps failing returns the events read last time."""
        try:
            self._events_cache = _retrying(self._read_events, self._file.swmr_mode)
        except (OSError, RuntimeError):
            if not self._file.swmr_mode:
                raise
        return list(self._events_cache)

    def _read_events(self) -> list[Event]:
        steps_ds = self._dataset(EVENT_STEP)
        steps = steps_ds[: steps_ds.shape[0]]
        if EVENT_TEXT not in self._file:  # files written before the fixed-size encoding: variable-length strings
            kinds = self._dataset("events/kind")
            messages = self._dataset("events/message")
            n = min(len(steps), kinds.shape[0], messages.shape[0])
            return [Event(int(s), _py(k), _py(m)) for s, k, m in zip(steps[:n], kinds[:n], messages[:n], strict=True)]
        spans_ds = self._dataset(EVENT_SPAN)
        n = min(len(steps), spans_ds.shape[0])
        spans = spans_ds[:n]
        text_ds = self._dataset(EVENT_TEXT)
        ends = spans[:, 0] + spans[:, 1] + spans[:, 2] if n else np.zeros(0, np.int64)
        n = int(np.searchsorted(np.maximum.accumulate(ends), text_ds.shape[0], side="right")) if n else 0
        text = text_ds[: int(ends[n - 1])].tobytes() if n else b""
        out = []
        for s, (offset, k, m) in zip(steps[:n], spans[:n], strict=True):
            kind = text[offset : offset + k].decode("utf-8", "replace")
            message = text[offset + k : offset + k + m].decode("utf-8", "replace")
            out.append(Event(int(s), kind, message))
        return out

    def tensor(self, name: str) -> tuple[np.ndarray, h5py.Dataset]:
        """Steps ``(k,)`` and the lazily read gradient dataset ``(k, *shape)`` of a strided tensor."""
        steps_ds = self._dataset(tensor_path(name, "step"))
        grads = self._dataset(tensor_path(name))
        k = min(steps_ds.shape[0], grads.shape[0])
        return steps_ds[:k], grads

    def summary(self) -> dict[str, Any]:
        """A JSON-ready overview: identity, status, sizes, groups, gate sets and the last evaluation."""
        ev = self.eval_table()
        last_eval = {k: _py(v[-1]) for k, v in ev.items()} if len(ev["step"]) else None
        first_last = (int(self.row(STEP, 0)), int(self.row(STEP, -1))) if self.n_steps else None
        return {
            "path": str(self.path),
            "format": FORMAT_NAME,
            "schema_version": self.schema_version,
            "status": self.status,
            "method": self.method,
            "dataset": self.dataset,
            "seed": self.seed,
            "device": self.attrs.get("device", ""),
            "created": self.attrs.get("created", ""),
            "ws_version": self.attrs.get("ws_version", ""),
            "error": self.attrs.get("error", ""),
            "rows": self.n_steps,
            "step_range": first_last,
            "loss_terms": list(self.loss_terms),
            "groups": {g.name: {"role": g.role, "n_params": g.n_params} for g in self.layout.groups},
            "gate_sets": {g.name: {"kind": g.kind, "n_gates": g.n_gates} for g in self.layout.gate_sets},
            "prompts": {p.name: p.n_tokens for p in self.layout.prompts},
            "tensors": {t.name: list(t.shape) for t in self.layout.tensors},
            "config": self.config,
            "last_eval": last_eval,
            "events": len(self.events()),
        }

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _last(ds: h5py.Dataset) -> str | None:
    ds.refresh()
    n = ds.shape[0]
    return str(_py(ds[n - 1])) if n else None


def _refreshed_length(f: h5py.File) -> int:
    if f.swmr_mode:
        f[STEP].refresh()
    return int(f[STEP].shape[0])


def _retrying(read: Any, live: bool, attempts: int = 3, pause: float = 0.05) -> Any:
    """``read()``; in a live (SWMR) file an ``OSError`` from a block the writer is updating is retried after a
    short pause, ``attempts`` times in all, then raised."""
    for attempt in range(attempts if live else 1):
        try:
            return read()
        except (OSError, RuntimeError):
            if not live or attempt == attempts - 1:
                raise
            time.sleep(pause * (attempt + 1))
    raise AssertionError("unreachable")


def _reason(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return "checksum mismatch" if "checksum" in text.lower() or "filter returned failure" in text else text


def _corrupt(p: Path, exc: BaseException | str) -> RecordingError:
    reason = str(exc).split("(")[0].strip().rstrip(":") or "unreadable"
    return RecordingError(
        f"{p}: truncated or corrupt HDF5 file ({reason}); re-record the run or restore it from a copy"
    )


def _open_h5(p: Path) -> h5py.File:
    """Open for reading; errors become one line.

    A plain open comes first because only it checks the file's end against the size HDF5 recorded (in SWMR mode
    a truncated file opens and then every metadata read retries for minutes). Files still being written, or left
    by a killed writer, refuse a plain open (their consistency flags are set) and open in SWMR mode.
    """
    try:
        return h5py.File(p, "r")
    except (OSError, RuntimeError) as exc:  # HDF5 raises RuntimeError for some damaged superblocks
        stored = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(exc))
        if stored:
            raise _corrupt(p, f"{stored[1]} of {stored[2]} bytes") from None
        plain_error = exc
    stored_eof = _stored_eof(p)
    if stored_eof is not None and p.stat().st_size < stored_eof:
        raise _corrupt(p, f"{p.stat().st_size} of {stored_eof} bytes")
    try:
        return h5py.File(p, "r", swmr=True, libver="latest")
    except (OSError, RuntimeError):
        raise _corrupt(p, plain_error) from None


def _stored_eof(p: Path) -> int | None:
    """The end-of-file address a version 2/3 superblock at offset 0 records (what libver="latest" writes)."""
    with p.open("rb") as fh:
        head = fh.read(48)
    if len(head) < 48 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return None
    return int.from_bytes(head[28:36], "little")  # signature, version, sizes, flags, base and extension addresses


def _validate(p: Path, f: h5py.File) -> Layout:
    fmt = _py(f.attrs.get("format", ""))
    if fmt != FORMAT_NAME:
        raise RecordingError(
            f"{p}: an HDF5 file but not a ws recording (no format={FORMAT_NAME!r} attribute); "
            "pass a file written by `ws record`"
        )
    version = f.attrs.get("schema_version")
    if version is None:
        raise RecordingError(f"{p}: ws recording without a schema_version attribute; the file is damaged")
    if int(version) > SCHEMA_VERSION:
        raise RecordingError(
            f"{p}: schema version {int(version)} is newer than this ws reads ({SCHEMA_VERSION}); upgrade ws to read it"
        )
    if int(version) < 1:
        raise RecordingError(f"{p}: schema version {int(version)} is not a valid ws schema version")
    try:
        layout = Layout.from_json(f.attrs["layout"])
        missing = [path for path in layout.step_series() if path not in f]
        status = _py(f.attrs["status"])
    except (KeyError, ValueError, TypeError) as exc:
        raise RecordingError(f"{p}: ws recording with a damaged layout ({exc}); re-record the run") from None
    if missing:
        raise RecordingError(f"{p}: ws recording is missing {missing[0]!r}; the file is damaged, re-record the run")
    if status not in STATUSES:
        raise RecordingError(f"{p}: unknown status {status!r}; the file is damaged")
    return layout


def _py(value: Any) -> Any:
    """HDF5 attribute/string values as plain Python (bytes decoded, numpy scalars unwrapped)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


def iter_recordings(paths: Sequence[str | os.PathLike[str]]) -> Iterator[Path]:
    """Expand files and directories (recursively, ``*.h5``) into recording paths, sorted within each directory.

    A missing path raises :class:`RecordingError`.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            yield from sorted(p.rglob("*.h5"))
        elif p.exists():
            yield p
        else:
            raise RecordingError(f"{p}: no such file or directory; check the path")
