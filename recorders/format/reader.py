"""Reading recordings lazily: :class:`Recording` opens, validates and reads row ranges (numpy + h5py only)."""

from __future__ import annotations

import contextlib
import functools
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
    EVAL_GATE_STATS,
    EVENT_FIELDS,
    EVENT_SPAN,
    EVENT_STEP,
    EVENT_TEXT,
    FORMAT_NAME,
    SCHEMA_VERSION,
    STATUS_LOG,
    STATUSES,
    STEP,
    VAL_ACC,
    EvalSpec,
    GateSetSpec,
    GroupSpec,
    Layout,
    PromptSpec,
    TensorSpec,
    correct_path,
    eval_gate_path,
    tensor_path,
)


@dataclass(frozen=True)
class Event:
    step: int
    kind: str
    message: str


# Everything h5py/HDF5 raises on a damaged file (checksum, heap, address, decoding, selection errors).
_H5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError)
# SWMR readers retry a metadata read whose checksum fails (the writer may be mid-flush), sleeping longer each time:
# HDF5's default of 100 attempts makes a damaged file hang for minutes; 20 attempts cost ~10 ms in all.
SWMR_READ_ATTEMPTS = 20
# The smallest ws recording: a version 2/3 superblock with 8-byte offsets is 48 bytes.
SUPERBLOCK_BYTES = 48


@dataclass
class Recording:
    """A lazily read recording; works on complete, running (follow with :meth:`refresh`) and killed files.

    Series are read by row range (``read(path, start, stop)``), never whole unless asked. ``n_steps`` is the number
    of committed rows. :meth:`open` validates the whole structure once (attributes, every declared dataset's kind,
    row shape, dtype and length against ``steps/step``) and raises
    :class:`~recorders.format.errors.RecordingError` for anything that is not a readable ws recording of a supported
    schema version. A file damaged only in part opens: ``damaged`` maps each damaged part (a dataset path,
    ``eval`` or ``events``) to the reason, and reading such a part raises ``RecordingError`` naming the file and
    the part, as does any HDF5 error met while reading (the part is then added to ``damaged``). ``unchecked``
    names the series of a killed (or live) file whose last chunk was read without its checksum, and why.
    """

    path: Path
    _file: h5py.File = field(repr=False)
    layout: Layout = field(repr=False)
    n_steps: int = 0
    _step_cache: np.ndarray | None = field(default=None, repr=False)
    damaged: dict[str, str] = field(default_factory=dict)
    unchecked: dict[str, str] = field(default_factory=dict)
    _attrs: dict[str, Any] = field(default_factory=dict, repr=False)
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
            attrs, layout = _validate(p, f)
            problem = _dataset_problem(f, STEP, (), np.dtype("int64"), 0)
            if problem:
                raise RecordingError(f"{p}: {STEP} is damaged ({problem}); the file cannot be read, re-record the run")
            rec = cls(path=p, _file=f, layout=layout, _attrs=attrs)
            rec.refresh()
            rec.damaged.update(_check_structure(f, layout, rec.n_steps, attrs["status"]))
        except RecordingError:
            f.close()
            raise
        except _H5_ERRORS as exc:
            f.close()
            raise _corrupt(p, exc) from None
        except BaseException:
            f.close()
            raise
        return rec

    # ------------------------------------------------------------------ attributes (validated at open)
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._attrs)

    @property
    def status(self) -> str:
        """``running``, ``complete`` or ``failed``; in a live file, read from the status history the writer appends
        to (a SWMR reader cannot see a changed root attribute), else from the ``status`` attribute."""
        f = self._file
        if f.swmr_mode and not self.is_damaged(STATUS_LOG):
            try:
                log = _retrying(lambda: _last(f[STATUS_LOG]), True) if STATUS_LOG in f else None
            except _H5_ERRORS:
                log = None
            if log in STATUSES:
                return str(log)
        return str(self._attrs["status"])

    @property
    def complete(self) -> bool:
        """True only for a ``complete`` file that is also consistent (see :meth:`inconsistency`)."""
        return self.status == "complete" and not self.inconsistency()

    def inconsistency(self) -> str:
        """Why a file that says ``complete`` cannot be (empty when it is consistent): a damaged part, no
        ``finished`` time, fewer rows than its planned ``total_steps``, or a per-step series shorter than
        ``steps/step``."""
        if self.damaged:
            return "damaged: " + ", ".join(sorted(self.damaged))
        if not self._attrs.get("finished"):
            return "no finished time"
        total = _int_attr(self._attrs.get("total_steps", 0)) or 0
        if total and self.n_steps != total:
            return f"{self.n_steps} rows of {total} planned steps"
        with self._guard(STEP):
            short = [p for p in self.layout.step_series() if self._file[p].shape[0] < self.n_steps]
        return f"{short[0]} is shorter than {STEP}" if short else ""

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._attrs["config"])

    @property
    def method(self) -> str:
        return str(self._attrs["method"])

    @property
    def seed(self) -> int:
        return int(self._attrs["seed"])

    @property
    def dataset(self) -> str:
        return str(self._attrs.get("dataset", ""))

    @property
    def schema_version(self) -> int:
        return int(self._attrs["schema_version"])

    @property
    def schema_minor(self) -> int:
        """Minor schema version (0 for files written before minor versions existed)."""
        return int(self._file.attrs.get("schema_minor", 0))

    @property
    def evaluation(self) -> EvalSpec | None:
        """What evaluations record besides accuracy (schema 1.1), or None for files that have no such record."""
        return self.layout.evaluation

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
        """Whether the declared or optional dataset ``path`` is present and readable (not damaged)."""
        if path in self.damaged or _part(path) in self.damaged:
            return False
        with self._guard(path):
            return path in self._file

    def is_damaged(self, path: str) -> bool:
        return path in self.damaged or _part(path) in self.damaged

    # ------------------------------------------------------------------ reading
    @contextlib.contextmanager
    def _guard(self, part: str) -> Iterator[None]:
        """Turn any h5py/HDF5 error met while reading ``part`` into a RecordingError naming the file and part."""
        try:
            yield
        except RecordingError:
            raise
        except _H5_ERRORS as exc:
            reason = _reason(exc)
            self.damaged.setdefault(part, reason)
            raise self._damaged_error(part) from None

    def _damaged_error(self, part: str) -> RecordingError:
        reason = self.damaged.get(part) or self.damaged.get(_part(part), "unreadable")
        return RecordingError(
            f"{self.path}: {part} is damaged ({reason}); the rest of the file is readable, re-record the run for it"
        )

    def refresh(self) -> int:
        """Re-read lengths of a file that may still be written (SWMR); returns the committed row count."""
        f = self._file
        if f.swmr_mode:  # a live file: a block the writer is updating is retried, then the last length is kept
            try:
                n = _retrying(lambda: _refreshed_length(f), True)
            except _H5_ERRORS:
                return self.n_steps
        else:
            with self._guard(STEP):
                n = int(f[STEP].shape[0])
        if n != self.n_steps:
            self._step_cache = None
        self.n_steps = n
        return n

    def _dataset(self, path: str) -> h5py.Dataset:
        if self.is_damaged(path):
            raise self._damaged_error(path if path in self.damaged else _part(path))
        with self._guard(path):
            ds = self._file.get(path)
            if not isinstance(ds, h5py.Dataset):
                raise KeyError("not in the file" if ds is None else "not a dataset")
            if self._file.swmr_mode:
                ds.refresh()
        return ds

    def read(self, path: str, start: int = 0, stop: int | None = None, stride: int = 1) -> np.ndarray:
        """Rows ``[start, stop)`` (every ``stride``-th) of a per-step series, clipped to the committed rows."""
        n = self.n_steps
        stop = n if stop is None else min(max(stop, 0), n)
        start = min(max(start, 0), stop)
        return self._checked(path, start, stop, stride)

    def row(self, path: str, index: int) -> np.ndarray:
        """One row of a per-step series (``index`` counts committed rows; negative counts from the end)."""
        n = self.n_steps
        if not -n <= index < n:
            raise IndexError(f"row {index} out of range for {n} committed rows")
        return self._checked(path, index % n, index % n + 1)[0]

    def _checked(self, path: str, start: int, stop: int, stride: int = 1) -> np.ndarray:
        """Rows ``[start, stop)`` (every ``stride``-th) of a per-step series (see :meth:`_rows`); an error (a
        checksum mismatch, a short series) marks the series damaged and becomes one line."""
        ds = self._dataset(path)
        with self._guard(path):
            if ds.shape[0] < stop:
                raise ValueError(f"{ds.shape[0]} rows, {STEP} has {stop}")
            return self._rows(ds, start, stop, stride)

    def _rows(self, ds: h5py.Dataset, start: int, stop: int, stride: int = 1, retry: bool = True) -> np.ndarray:
        """Rows ``[start, stop)`` (every ``stride``-th) of ``ds``, retried in a live file unless the caller retries.

        One checksum mismatch is not damage: a writer killed while a flush rewrites the chunk that holds its last
        rows (a SIGKILL can cut a write at a page boundary) leaves that chunk's checksum stale, while the bytes of
        every row flushed before are unchanged. In a file that is not ``complete`` such a last chunk is read
        without its checksum (see :func:`_read_torn_tail`) and the dataset is named in ``unchecked``."""
        try:
            return np.asarray(_retrying(lambda: ds[start:stop:stride], retry and self._file.swmr_mode))
        except OSError as exc:
            torn = _reason(exc) == "checksum mismatch" and self.status != "complete"
            rows = _read_torn_tail(ds, start, stop) if torn else None
            if rows is None:
                raise
            self.unchecked[str(ds.name).lstrip("/")] = TORN_TAIL
            return rows[::stride]

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
        with self._guard("eval"):
            n = min(ds.shape[0] for ds in cols.values())
            return {name: self._rows(ds, 0, n) for name, ds in cols.items()}

    def validation_acc(self) -> np.ndarray:
        """Validation accuracy per evaluation ``(evals,)`` float64; all NaN when not recorded (schema 1.0)."""
        n = len(self.eval_table()["step"])
        if VAL_ACC not in self._file:
            return np.full(n, np.nan)
        values = np.full(n, np.nan)
        stored = self._series_head(VAL_ACC, n)
        values[: len(stored)] = stored
        return values

    def eval_correct(self) -> dict[str, np.ndarray]:
        """Per model (``trained`` and each counterfactual) the per-image correctness ``(evals, n_images)`` bool,
        rows aligned with :meth:`eval_table` (base images first); ``{}`` when not recorded."""
        spec = self.evaluation
        if spec is None:
            return {}
        n = len(self.eval_table()["step"])
        out = {m: self._series_head(correct_path(m), n).astype(bool) for m in spec.models}
        k = min(len(v) for v in out.values())
        return {m: v[:k] for m, v in out.items()}

    def eval_gate_stats(self, gate_set: str) -> dict[str, np.ndarray]:
        """Instance gate statistics over the test images, per stat ``(evals, n_gates)``; ``{}`` when not recorded."""
        spec = self.evaluation
        if spec is None or gate_set not in spec.instance_gates:
            return {}
        n = len(self.eval_table()["step"])
        return {
            stat: self._series_head(eval_gate_path(gate_set, stat), n).astype(np.float64) for stat in EVAL_GATE_STATS
        }

    def _series_head(self, path: str, n: int) -> np.ndarray:
        """The first ``n`` rows (fewer if the dataset is shorter) of the dataset at ``path``."""
        ds = self._dataset(path)
        with self._guard(path):
            return self._rows(ds, 0, min(n, ds.shape[0]))

    def events(self) -> list[Event]:
        """Recorded events, oldest first. In a live file, events whose bytes are not all written yet are left out
        (they appear on a later call) and a read that keeps failing returns the events read last time; in a closed
        file an unreadable events part is damaged."""
        if self._file.swmr_mode:
            try:
                self._events_cache = _retrying(self._read_events, True)
            except _H5_ERRORS:
                pass
            return list(self._events_cache)
        with self._guard("events"):
            return self._read_events()

    def _read_events(self) -> list[Event]:
        steps_ds = self._dataset(EVENT_STEP)
        steps = self._rows(steps_ds, 0, steps_ds.shape[0], retry=False)
        if EVENT_TEXT not in self._file:  # files written before the fixed-size encoding: variable-length strings
            kinds = self._dataset("events/kind")
            messages = self._dataset("events/message")
            n = min(len(steps), kinds.shape[0], messages.shape[0])
            return [
                Event(int(s), str(_py(k)), str(_py(m)))
                for s, k, m in zip(steps[:n], kinds[:n], messages[:n], strict=True)
            ]
        spans_ds = self._dataset(EVENT_SPAN)
        n = min(len(steps), spans_ds.shape[0])
        spans = self._rows(spans_ds, 0, n, retry=False)
        text_ds = self._dataset(EVENT_TEXT)
        ends = spans[:, 0] + spans[:, 1] + spans[:, 2] if n else np.zeros(0, np.int64)
        n = int(np.searchsorted(np.maximum.accumulate(ends), text_ds.shape[0], side="right")) if n else 0
        text = self._rows(text_ds, 0, int(ends[n - 1]), retry=False).tobytes() if n else b""
        out = []
        for s, (offset, k, m) in zip(steps[:n], spans[:n], strict=True):
            kind = text[offset : offset + k].decode("utf-8", "replace")
            message = text[offset + k : offset + k + m].decode("utf-8", "replace")
            out.append(Event(int(s), kind, message))
        return out

    def tensor(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Steps ``(k,)`` and gradients ``(k, *shape)`` of a strided tensor."""
        steps_ds = self._dataset(tensor_path(name, "step"))
        grads = self._dataset(tensor_path(name))
        with self._guard(f"tensors/{name}"):
            k = min(steps_ds.shape[0], grads.shape[0])
            return steps_ds[:k], grads[:k]

    def summary(self) -> dict[str, Any]:
        """A JSON-ready overview: identity, status, sizes, groups, gate sets and the last evaluation. Parts that
        cannot be read are left out (``None``) and named in ``damaged``."""
        last_eval = first_last = n_events = None
        with contextlib.suppress(RecordingError):
            ev = self.eval_table()
            last_eval = {k: _py(v[-1]) for k, v in ev.items()} if len(ev["step"]) else None
        with contextlib.suppress(RecordingError):
            first_last = (int(self.row(STEP, 0)), int(self.row(STEP, -1))) if self.n_steps else None
        with contextlib.suppress(RecordingError):
            n_events = len(self.events())
        attrs = self._attrs
        return {
            "path": str(self.path),
            "format": FORMAT_NAME,
            "schema_version": self.schema_version,
            "schema_minor": self.schema_minor,
            "status": self.status,
            "method": self.method,
            "dataset": self.dataset,
            "seed": self.seed,
            "device": attrs.get("device", ""),
            "created": attrs.get("created", ""),
            "ws_version": attrs.get("ws_version", ""),
            "error": attrs.get("error", ""),
            "rows": self.n_steps,
            "step_range": first_last,
            "loss_terms": list(self.loss_terms),
            "groups": {g.name: {"role": g.role, "n_params": g.n_params} for g in self.layout.groups},
            "gate_sets": {g.name: {"kind": g.kind, "n_gates": g.n_gates} for g in self.layout.gate_sets},
            "prompts": {p.name: p.n_tokens for p in self.layout.prompts},
            "tensors": {t.name: list(t.shape) for t in self.layout.tensors},
            "config": self.config,
            "last_eval": last_eval,
            "events": n_events,
            "damaged": dict(self.damaged),
            "unchecked": dict(self.unchecked),
        }

    def close(self) -> None:
        with contextlib.suppress(*_H5_ERRORS):
            self._file.close()

    def __enter__(self) -> Recording:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _part(path: str) -> str:
    """The part a dataset belongs to for damage bookkeeping: ``eval``/``events``/``tensors/<name>``, else itself."""
    head = path.split("/", 1)[0]
    if head in ("eval", "events"):
        return head
    if head == "tensors":
        return "/".join(path.split("/")[:2])
    return path


TORN_TAIL = "last chunk's checksum is the one the flush before the writer stopped wrote; its rows match it"


def _read_torn_tail(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray | None:
    """Rows ``[start, stop)`` of ``ds`` whose last chunk fails its checksum because a writer was stopped while a
    flush rewrote it in place; None unless every row asked for is proven intact.

    Such a chunk holds new bytes up to the page where the write was cut and the previous flush's bytes after it,
    with the previous flush's checksum at its end. That checksum covers the rows flushed before plus fill (zeros),
    so the rows ``[0, k)`` of the chunk for the largest ``k`` whose zero-filled prefix matches it
    (:func:`_fletcher32_prefix_rows`) are exactly what that flush wrote. Needs Fletcher-32 as the only filter and
    chunks split along rows only; rows before the last chunk are read normally, so damage elsewhere still raises."""
    chunks = ds.chunks
    plain = not (ds.compression or ds.shuffle or ds.scaleoffset is not None)
    if chunks is None or not (ds.fletcher32 and plain) or tuple(chunks[1:]) != tuple(ds.shape[1:]) or stop <= start:
        return None
    tail = (ds.shape[0] - 1) // chunks[0] * chunks[0]
    if stop <= tail:
        return None
    row_bytes = int(np.prod(chunks[1:], dtype=np.int64)) * ds.dtype.itemsize
    mask, raw = ds.id.read_direct_chunk((tail,) + (0,) * (ds.ndim - 1))
    if mask != 0 or len(raw) != chunks[0] * row_bytes + 4:
        return None
    intact = _fletcher32_prefix_rows(raw, row_bytes)
    if intact is None or stop - tail > intact:
        return None
    last = np.frombuffer(raw[:-4], dtype=ds.dtype).reshape(chunks)[max(start, tail) - tail : stop - tail]
    return np.concatenate([np.asarray(ds[start:tail]), last]) if start < tail else last.copy()


def _fletcher32_prefix_rows(raw: bytes, row_bytes: int) -> int | None:
    """The largest ``k`` such that HDF5's Fletcher-32 of the chunk's first ``k`` rows followed by zeros equals the
    checksum stored in the chunk's last 4 bytes; None when no ``k`` does.

    HDF5 (``H5_checksum_fletcher32``) reads the data as big-endian 16-bit words ``w[0..N)`` (an odd last byte
    is the high byte of one more word) and folds both sums with end-around carry, so they equal, modulo 65535,
    ``s1 = Σ w[i]`` and ``s2 = Σ (N − i)·w[i]``; trailing zero words add nothing to either. The filter stores
    ``s2 << 16 | s1`` little-endian (byte-swapped by some old writers, which HDF5 also accepts)."""
    body, stored = raw[:-4], int.from_bytes(raw[-4:], "little")
    if not body or row_bytes <= 0:
        return None
    padded = body + b"\0" * (len(body) % 2)
    words = np.frombuffer(padded, ">u2").astype(np.int64)
    n = len(words)
    weights = n - np.arange(n, dtype=np.int64)
    s1 = np.concatenate([[0], np.cumsum(words % 65535) % 65535])
    s2 = np.concatenate([[0], np.cumsum(weights * words % 65535) % 65535])
    k = np.arange(len(body) // row_bytes + 1, dtype=np.int64)
    full, odd = k * row_bytes // 2, k * row_bytes % 2
    high = np.frombuffer(padded, np.uint8)[np.minimum(k * row_bytes, len(padded) - 1)].astype(np.int64) << 8
    part1 = (s1[full] + odd * high) % 65535
    part2 = (s2[full] + odd * high * (n - full)) % 65535
    targets = {stored, int.from_bytes(raw[-4:], "big")}
    found = np.zeros(len(k), bool)
    for target in targets:
        found |= (part1 == (target & 0xFFFF) % 65535) & (part2 == (target >> 16) % 65535)
    return int(k[found][-1]) if found.any() else None


def _reason(exc: BaseException | str) -> str:
    """The first line of an h5py error (``checksum mismatch`` for a damaged chunk under Fletcher-32)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if "checksum" in text.lower() or "filter returned failure" in text:
        return "checksum mismatch"
    return text.strip("'\"") or type(exc).__name__


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


def _corrupt(p: Path, exc: BaseException | str) -> RecordingError:
    reason = str(exc).split("(")[0].strip().rstrip(":") or "unreadable"
    return RecordingError(
        f"{p}: truncated or corrupt HDF5 file ({reason}); re-record the run or restore it from a copy"
    )


def _open_h5(p: Path) -> h5py.File:
    """Open for reading; errors become one line, and no file makes this hang.

    Truncation is detected before HDF5 opens anything: a file shorter than a superblock, or shorter than the end of
    file its superblock records. A plain open comes next; files still being written, or left by a killed writer,
    refuse it (their consistency flags are set) and open in SWMR mode with few metadata read attempts
    (:data:`SWMR_READ_ATTEMPTS`), since HDF5's default retries a damaged file's metadata for minutes.
    """
    size = p.stat().st_size
    if size < SUPERBLOCK_BYTES:
        raise _corrupt(p, f"{size} bytes, shorter than an HDF5 superblock")
    stored_eof = _stored_eof(p)
    if stored_eof is not None and size < stored_eof:
        raise _corrupt(p, f"{size} of {stored_eof} bytes")
    try:
        return h5py.File(p, "r")
    except (OSError, RuntimeError) as exc:  # HDF5 raises RuntimeError for some damaged superblocks
        stored = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", str(exc))
        if stored:
            raise _corrupt(p, f"{stored[1]} of {stored[2]} bytes") from None
        plain_error = exc
    fapl = _swmr_fapl()
    if fapl is None:  # the read-attempts setting is unavailable: refuse rather than risk a hang on a damaged file
        if "checksum" in str(plain_error):
            raise _corrupt(p, plain_error) from None
        try:
            return h5py.File(p, "r", swmr=True, libver="latest")
        except (OSError, RuntimeError):
            raise _corrupt(p, plain_error) from None
    try:
        fid = h5py.h5f.open(os.fsencode(p), h5py.h5f.ACC_RDONLY | h5py.h5f.ACC_SWMR_READ, fapl=fapl)
        return h5py.File(fid)
    except (OSError, RuntimeError, ValueError):
        raise _corrupt(p, plain_error) from None


@functools.cache
def _set_read_attempts() -> Any:
    """HDF5's ``H5Pset_metadata_read_attempts`` from the library h5py loaded (not exposed by h5py), or None."""
    import ctypes
    import glob

    candidates: list[str] = []
    with contextlib.suppress(OSError):
        with open("/proc/self/maps") as maps:  # Linux: the exact library this process uses
            candidates += sorted({line.split()[-1] for line in maps if re.search(r"/libhdf5[-.][^/]*$", line.strip())})
    package = Path(h5py.__file__).parent
    for pattern in ("../h5py.libs/libhdf5-*", ".dylibs/libhdf5*.dylib", "../h5py.libs/libhdf5*"):
        candidates += sorted(glob.glob(str(package / pattern)))
    for candidate in candidates:
        try:
            function = ctypes.CDLL(candidate).H5Pset_metadata_read_attempts
        except (OSError, AttributeError):
            continue
        function.argtypes = [ctypes.c_int64, ctypes.c_uint]
        function.restype = ctypes.c_int
        return function
    return None


def _swmr_fapl() -> Any:
    """A file-access property list for SWMR reads with :data:`SWMR_READ_ATTEMPTS`, or None if it cannot be set."""
    function = _set_read_attempts()
    if function is None:
        return None
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    if function(fapl.id, SWMR_READ_ATTEMPTS) < 0:
        return None
    return fapl


def _stored_eof(p: Path) -> int | None:
    """The end-of-file address a version 2/3 superblock at offset 0 records (what libver="latest" writes)."""
    with p.open("rb") as fh:
        head = fh.read(48)
    if len(head) < 48 or head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[9] != 8:
        return None
    return int.from_bytes(head[28:36], "little")  # signature, version, sizes, flags, base and extension addresses


def _validate(p: Path, f: h5py.File) -> tuple[dict[str, Any], Layout]:
    """The root attributes, parsed and checked (``config`` a JSON object), and the layout; RecordingError if any
    attribute is missing, unparseable or unreadable."""
    try:
        raw = {k: f.attrs[k] for k in f.attrs.keys()}
    except _H5_ERRORS as exc:
        raise RecordingError(f"{p}: the root attributes are unreadable ({_reason(exc)}); the file is damaged") from None
    fmt = _py(raw.get("format", ""))
    if fmt != FORMAT_NAME:
        raise RecordingError(
            f"{p}: an HDF5 file but not a ws recording (no format={FORMAT_NAME!r} attribute); "
            "pass a file written by `ws record`"
        )
    version = _int_attr(raw.get("schema_version"))
    if version is None:
        raise RecordingError(f"{p}: ws recording without a valid schema_version attribute; the file is damaged")
    if version > SCHEMA_VERSION:
        raise RecordingError(
            f"{p}: schema version {version} is newer than this ws reads ({SCHEMA_VERSION}); upgrade ws to read it"
        )
    if version < 1:
        raise RecordingError(f"{p}: schema version {version} is not a valid ws schema version")
    try:
        layout = Layout.from_json(_py(raw["layout"]))
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise RecordingError(f"{p}: ws recording with a damaged layout ({_reason(exc)}); re-record the run") from None
    status = _py(raw.get("status"))
    if status not in STATUSES:
        raise RecordingError(f"{p}: unknown status {status!r}; the file is damaged")
    try:
        config = json.loads(_py(raw.get("config", "")))
    except (TypeError, ValueError):
        config = None
    if not isinstance(config, dict):
        raise RecordingError(f"{p}: the config attribute is not a JSON object; the file is damaged, re-record the run")
    seed = _int_attr(raw.get("seed"))
    method = _py(raw.get("method"))
    if seed is None or not isinstance(method, str):
        bad = "seed" if seed is None else "method"
        raise RecordingError(f"{p}: the {bad} attribute is missing or not valid; the file is damaged")
    attrs = {k: _py(v) for k, v in raw.items() if k != "layout"}
    attrs.update(schema_version=version, status=status, config=config, seed=seed, method=method)
    attrs["dataset"] = str(attrs.get("dataset") or "")
    return attrs, layout


def _int_attr(value: Any) -> int | None:
    value = _py(value)
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return int(number) if np.isfinite(number) and number == int(number) else None


def _check_structure(f: h5py.File, layout: Layout, n_steps: int, status: str) -> dict[str, str]:
    """Every dataset the layout declares, checked for kind (a dataset, not a group or link), row shape, dtype and
    length against ``steps/step``; returns the damaged parts with reasons (``steps/step`` is checked before)."""
    expected: dict[str, tuple[tuple[int, ...], Any]] = dict(layout.step_series())
    del expected[STEP]
    expected_rows = {path: n_steps for path in expected}
    for name in EVAL_FIELDS:
        expected[f"eval/{name}"] = ((), "int" if name in ("step", "epoch") else "float")
    expected[EVENT_STEP] = ((), "int")
    if EVENT_TEXT in f:  # the fixed-size event encoding
        expected[EVENT_TEXT] = ((), np.dtype("uint8"))
        expected[EVENT_SPAN] = ((3,), "int")
        event_columns: tuple[str, ...] = (EVENT_STEP, EVENT_SPAN)
    else:  # files written before it: variable-length string columns
        for name in EVENT_FIELDS[1:]:
            expected[f"events/{name}"] = ((), None)
        event_columns = tuple(f"events/{name}" for name in EVENT_FIELDS)
    for tensor in layout.tensors:
        expected[tensor_path(tensor.name)] = (tuple(tensor.shape), np.dtype("float32"))
        expected[tensor_path(tensor.name, "step")] = ((), "int")
    damaged: dict[str, str] = {}
    for path, (row_shape, dtype) in expected.items():
        problem = _dataset_problem(f, path, row_shape, dtype, expected_rows.get(path, 0))
        if problem:
            damaged.setdefault(_part(path), f"{path}: {problem}" if _part(path) != path else problem)
    if "events" not in damaged and status != "running":
        try:
            lengths = {name: f[name].shape[0] for name in event_columns}
        except _H5_ERRORS as exc:
            lengths, damaged["events"] = {}, f"unreadable ({_reason(exc)})"
        if len(set(lengths.values())) > 1:
            damaged["events"] = "columns of unequal length: " + ", ".join(f"{k} {v}" for k, v in lengths.items())
    return damaged


def _dataset_problem(f: h5py.File, path: str, row_shape: tuple[int, ...], dtype: Any, rows: int) -> str:
    """Why ``path`` is not a dataset of rows ``row_shape`` and ``dtype`` holding at least ``rows`` rows ('' if it
    is). ``dtype`` is an exact dtype, ``"int"``/``"float"`` for any of that kind, or None for any."""
    try:
        link = f.get(path, getlink=True)
        if link is None:
            return "missing"
        if not isinstance(link, h5py.HardLink):
            return ("an external" if isinstance(link, h5py.ExternalLink) else "a soft") + " link, not a dataset"
        ds = f[path]
        if not isinstance(ds, h5py.Dataset):
            return "a group, not a dataset"
        if ds.shape is None or len(ds.shape) != 1 + len(row_shape) or tuple(ds.shape[1:]) != tuple(row_shape):
            return f"shape {ds.shape}, expected (rows, {', '.join(map(str, row_shape))})".replace(", )", ")")
        kind = {"int": "iu", "float": "f"}.get(dtype) if isinstance(dtype, str) else None
        if (kind and ds.dtype.kind not in kind) or (isinstance(dtype, np.dtype) and ds.dtype != dtype):
            return f"dtype {ds.dtype}, expected {dtype}"
        if ds.shape[0] < rows:
            return f"{ds.shape[0]} rows, {STEP} has {rows}"
    except _H5_ERRORS as exc:
        return f"unreadable ({_reason(exc)})"
    return ""


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

    A missing path, or a directory holding no ``*.h5`` file, raises :class:`RecordingError`.
    """
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.rglob("*.h5"))
            if not found:
                raise RecordingError(f"{p}: no .h5 recordings in this directory; pass recordings or a folder of them")
            yield from found
        elif p.exists():
            yield p
        else:
            raise RecordingError(f"{p}: no such file or directory; check the path")
