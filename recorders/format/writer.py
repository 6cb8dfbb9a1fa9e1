"""The recording writer: buffered blocks appended to an HDF5 file in SWMR mode (see :mod:`recorders.format.schema`).

Safety contract (docs/recording-format.md, "Writing safely"):

- the file is built under a temporary name in the target directory and renamed into place once it is in SWMR
  mode, so the final name never holds a half-created stub; an existing file is never replaced unless
  ``overwrite=True``;
- the writer holds a shared ``flock`` on the file for its life, so another writer (or ``ws record --force``)
  can tell it is in use;
- ``status`` becomes ``complete`` only after every block and the final flush succeeded; any failure leaves
  ``failed`` with the error, or ``running`` when even that cannot be written;
- a write that fails (a full disk) raises one :class:`~recorders.format.errors.RecordingError` line naming the
  path and the free space, and every row flushed before it stays readable.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from recorders.format.errors import RecordingError, WsError
from recorders.format.schema import (
    CHUNK_ROWS,
    EVAL_FIELDS,
    EVAL_GATE_STATS,
    EVENT_SPAN,
    EVENT_STEP,
    EVENT_TEXT,
    FORMAT_NAME,
    SCHEMA_MINOR,
    SCHEMA_VERSION,
    STATUS_ATTR_BYTES,
    STATUS_LOG,
    STATUSES,
    STEP,
    VAL_ACC,
    Layout,
    correct_path,
    eval_gate_path,
    grad_norm_path,
    harmonic_mean,
    status_attr,
    tensor_path,
    ws_version,
)

#: Bytes a recording needs before its first row (superblock, object headers, attributes, empty chunk indexes).
CREATION_BYTES = 64 * 1024
#: Free space a flush leaves untouched: enough to write ``failed`` and close cleanly after the disk fills. HDF5
#: cannot recover from a write that fails inside it (the next flush or object release can crash the process),
#: so the writer checks the free space before each block instead of letting HDF5 meet ENOSPC.
RESERVE_BYTES = 128 * 1024
#: HDF5's Fletcher-32 checksum filter on every chunked dataset (a switch only for benchmarks/recording_overhead.py,
#: which measures what it costs).
FLETCHER32 = True
#: Allowance per flush for chunk-index and object-header growth, on top of the chunks a block allocates.
FLUSH_METADATA_BYTES = 16 * 1024


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _size(n: float) -> str:
    """A byte count for people: ``3.2 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _free(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return -1


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return getattr(exc, "errno", None) == errno.ENOSPC or "errno = 28" in text or "No space left" in text


def check_writable(path: Path, overwrite: bool = False) -> None:
    """Raise a one-line :class:`RecordingError` unless a recording can be created at ``path``.

    Checks, without touching ``path`` itself: it is not a directory, it does not exist (unless ``overwrite``),
    an existing file is not held by another process (a running writer keeps a lock on it), and its directory
    can be created and written to. Cheap: call it before loading anything expensive.
    """
    if path.is_dir():
        raise RecordingError(f"--out {path} is a directory; pass a file path ending in .h5")
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise RecordingError(f"--out {path} already exists; choose another path, or pass --force to replace it")
        if not path.is_file():
            raise RecordingError(f"--out {path} is not a regular file; choose another path")
        holder = _lock_holder(path)
        if holder:
            raise RecordingError(f"--out {path} is in use by another process ({holder}); wait or choose another path")
    check_output_dir(path)


def check_output_dir(path: Path, flag: str = "--out") -> None:
    """Raise a one-line :class:`RecordingError` unless the directory of output file ``path`` exists or can be
    created, and a file can be created in it (a read-only filesystem, a missing permission, a file in the way)."""
    parent = path.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise RecordingError(f"{flag} {path}: {ancestor} is a file, not a directory; choose another path")
            break
    probe = parent / f".{path.name}.{os.getpid()}.probe"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        os.unlink(probe)
    except OSError as exc:
        raise RecordingError(
            f"{flag} {path}: cannot write in {parent} ({exc.strerror or exc}); choose a writable directory"
        ) from None


def _lock_holder(path: Path) -> str:
    """Empty when nobody holds a lock on ``path``; else a short description of the holder."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return ""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return "a file lock is held on it, e.g. by a running ws record or a reader"
    finally:
        os.close(fd)
    return ""


def _chunk_rows(row_shape: tuple[int, ...], dtype: Any, chunk_rows: int, block: int = 0) -> int:
    """Rows per chunk: ``chunk_rows``, fewer where a chunk would exceed ~1 MiB, and no more than the writer's
    ``block`` rows where a chunk would exceed 64 KiB: every flush rewrites (and checksums) the chunk it ends in,
    so a big chunk filled over several blocks costs its checksum several times (2.3× the writer's CPU time on
    512-token prompts; 1.5× with chunks of one block, see benchmarks/recording_overhead.py)."""
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = max(1, min(chunk_rows, (1 << 20) // row_bytes))
    if block and rows * row_bytes > 64 * 1024:
        rows = max(1, min(rows, block))
    return rows


def _create_growable(
    parent: h5py.Group,
    path: str,
    row_shape: tuple[int, ...],
    dtype: Any,
    chunk_rows: int,
    compression: str | None,
    block: int = 0,
) -> h5py.Dataset:
    rows = _chunk_rows(row_shape, dtype, chunk_rows, block)
    return parent.create_dataset(
        path,
        shape=(0, *row_shape),
        maxshape=(None, *row_shape),
        dtype=dtype,
        chunks=(rows, *row_shape),
        compression=compression,
        fletcher32=FLETCHER32,  # a damaged chunk reads as an error, never as a silently different number
    )


class RecordingWriter:
    """Writes one run's recording; use as a context manager so the status ends ``complete`` or ``failed``.

    Rows are buffered and appended in blocks of ``flush_every`` rows (or after ``flush_seconds``), each block
    followed by an HDF5 flush, in SWMR mode. ``append_step`` takes one row: a mapping from per-step dataset path
    (see :meth:`Layout.step_series`) to a scalar or an array of the row shape; missing float series are NaN.
    ``append_block`` takes arrays with a leading axis of ``n`` rows.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        layout: Layout,
        *,
        config: Mapping[str, Any],
        method: str,
        seed: int,
        device: str,
        dataset: str = "",
        flush_every: int = 256,
        flush_seconds: float = 5.0,
        compression: str | None = None,
        chunk_rows: int = CHUNK_ROWS,
        total_steps: int = 0,
        overwrite: bool = False,
        backbone_fingerprint: str = "",
    ) -> None:
        if flush_every < 1 or flush_seconds <= 0:
            raise ValueError("flush_every must be >= 1 and flush_seconds > 0")
        self.path = Path(path)
        self.layout = layout
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self._series = layout.step_series()
        self._nan_rows = {
            p: np.full(shape, np.nan, dtype) for p, (shape, dtype) in self._series.items() if dtype.kind == "f"
        }
        self._rows: dict[str, list[np.ndarray]] = {p: [] for p in self._series}
        self._pending = 0
        self._evals: list[tuple[int, int, float, float, float]] = []
        self._eval_extras: list[dict[str, np.ndarray]] = []
        self._events: list[tuple[int, str, str]] = []
        self._tensors: dict[str, list[tuple[int, np.ndarray]]] = {t.name: [] for t in layout.tensors}
        self._last_flush = time.monotonic()
        self._closed = False
        self._close_hooks: list[Callable[[], None]] = []
        check_writable(self.path, overwrite)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._overwrite = overwrite
        self._broken: RecordingError | None = None
        self._series_bytes = {p: int(np.prod(sh, dtype=np.int64)) * dt.itemsize for p, (sh, dt) in self._series.items()}
        self._row_bytes = sum(self._series_bytes.values())
        self._chunk_rows = {
            p: _chunk_rows(shape, dtype, chunk_rows, flush_every) for p, (shape, dtype) in self._series.items()
        }
        self._total_steps = int(total_steps)
        self._backbone_fingerprint = backbone_fingerprint
        self._length = 0  # committed rows, tracked here instead of asking HDF5 for every dataset's shape
        need = CREATION_BYTES + RESERVE_BYTES + self._rows_bytes(max(0, self._total_steps))
        free = _free(self.path.parent)
        if 0 <= free < need:
            raise RecordingError(
                f"{self.path}: not enough disk space: {_size(free)} free in {self.path.parent}, the run needs "
                f"about {_size(need)}; free some space or choose another --out"
            )
        tmp = self.path.parent / f".{self.path.name}.{os.getpid()}.tmp"
        self._tmp: Path | None = tmp
        self._lock_fd = -1
        try:
            f = self._file = self._create(tmp, layout, config, method, seed, device, dataset, compression, chunk_rows)
            self._lock_fd = os.open(tmp, os.O_RDONLY)
            fcntl.flock(self._lock_fd, fcntl.LOCK_SH)
            self._publish(tmp)
        except BaseException as exc:
            self._abandon_creation()
            if isinstance(exc, WsError):
                raise
            if isinstance(exc, OSError | RuntimeError):
                raise self._write_error(exc, "while creating the recording") from None
            raise
        self._tmp = None
        self._datasets = {p: f[p] for p in self._series}  # looking a dataset up costs ~0.1 ms: do it once
        self._other: dict[str, h5py.Dataset] = {}  # tensors, evaluations, events: looked up on first append

    # ------------------------------------------------------------------ creating
    def _create(
        self,
        tmp: Path,
        layout: Layout,
        config: Mapping[str, Any],
        method: str,
        seed: int,
        device: str,
        dataset: str,
        compression: str | None,
        chunk_rows: int,
    ) -> h5py.File:
        """Build the whole file at ``tmp`` and switch it to SWMR mode (nothing can be added to it afterwards)."""
        f = h5py.File(tmp, "w", libver="latest")
        f.attrs.update(
            {
                "format": FORMAT_NAME,
                "schema_version": SCHEMA_VERSION,
                "schema_minor": SCHEMA_MINOR,
                "status": status_attr("running"),
                "config": json.dumps(config, sort_keys=True, default=str),
                "method": method,
                "seed": int(seed),
                "dataset": dataset,
                "created": _now(),
                "finished": status_attr(""),
                "ws_version": ws_version(),
                "device": device,
                "error": status_attr(""),
                "layout": layout.to_json(),
                "total_steps": int(self._total_steps),
            }
        )
        if self._backbone_fingerprint:
            f.attrs["backbone_fingerprint"] = self._backbone_fingerprint
        for p, (shape, dtype) in self._series.items():
            _create_growable(f, p, shape, dtype, chunk_rows, compression, self.flush_every)
        for group in layout.groups:
            f[grad_norm_path(group.name)].parent.attrs.update({k: v for k, v in asdict(group).items() if k != "name"})
        for gates in layout.gate_sets:
            g = f.require_group(f"gates/{gates.name}")
            g.attrs.update(
                {
                    "kind": gates.kind,
                    "n_gates": gates.n_gates,
                    "prompt": gates.prompt,
                    "group": gates.group,
                    "init_logit": np.asarray(gates.init_logit, "f8"),
                    "labels": json.dumps(list(gates.labels)),
                }
            )
        for prompt in layout.prompts:
            f[f"prompts/{prompt.name}"].attrs.update({"n_tokens": prompt.n_tokens, "group": prompt.group})
        for tensor in layout.tensors:
            _create_growable(f, tensor_path(tensor.name), tensor.shape, "float32", 1, compression)
            _create_growable(f, tensor_path(tensor.name, "step"), (), "int64", 1024, compression)
            f[f"tensors/{tensor.name}"].attrs["stride"] = tensor.stride
        for name in EVAL_FIELDS:
            _create_growable(f, f"eval/{name}", (), "int64" if name in ("step", "epoch") else "float64", 256, None)
        self._extra_paths = self._create_eval_extras(f)
        _create_growable(f, EVENT_TEXT, (), "uint8", 4096, None)
        _create_growable(f, EVENT_SPAN, (3,), "int64", 256, None)
        _create_growable(f, EVENT_STEP, (), "int64", 256, None)
        _append(_create_growable(f, STATUS_LOG, (), f"S{STATUS_ATTR_BYTES}", 1, None), status_attr("running")[None])
        f.swmr_mode = True
        f.flush()
        return f

    def _publish(self, tmp: Path) -> None:
        """Move the finished stub to its final name: ``rename`` when replacing is allowed, else ``link`` (which
        refuses an existing name, so two writers racing for one path cannot both win)."""
        if self._overwrite:
            os.replace(tmp, self.path)
            return
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise RecordingError(
                f"--out {self.path} already exists; choose another path, or pass --force to replace it"
            ) from None
        except OSError:  # a filesystem without hard links: rename after a last check
            if self.path.exists():
                raise RecordingError(
                    f"--out {self.path} already exists; choose another path, or pass --force to replace it"
                ) from None
            os.replace(tmp, self.path)
            return
        os.unlink(tmp)

    def _abandon_creation(self) -> None:
        """Undo a creation that failed: close what was opened and delete the temporary file."""
        file = getattr(self, "_file", None)
        self._closed = True
        if file is not None:
            try:
                file.close()
            except (OSError, RuntimeError):
                pass
        self._release_lock()
        if self._tmp is not None:
            try:
                self._tmp.unlink(missing_ok=True)
            except OSError:
                pass

    def _release_lock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = -1

    def _write_error(self, exc: BaseException, when: str) -> RecordingError:
        """One line for a failed write: a full disk names the free space and what the rest of the run needs."""
        directory = self.path.parent
        if _is_disk_full(exc):
            remaining = max(0, self._total_steps - getattr(self, "_length", 0)) * self._row_bytes
            need = _size(remaining + CREATION_BYTES)
            rows = getattr(self, "_length", 0)
            kept = f"; the {rows} rows flushed before stay readable" if rows else ""
            return RecordingError(
                f"{self.path}: disk full {when} ({_size(max(_free(directory), 0))} free in {directory}, "
                f"about {need} more needed){kept}; free some space and record again"
            )
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return RecordingError(f"{self.path}: cannot write the recording {when} ({reason}); check the disk")

    def _create_eval_extras(self, f: h5py.File) -> dict[str, tuple[tuple[int, ...], str]]:
        """The 1.1 per-evaluation datasets the layout's :class:`EvalSpec` declares, with row shape and dtype."""
        spec = self.layout.evaluation
        if spec is None:
            return {}
        gate_sizes = {g.name: g.n_gates for g in self.layout.gate_sets}
        paths: dict[str, tuple[tuple[int, ...], str]] = {VAL_ACC: ((), "float64")}
        for model in spec.models:
            paths[correct_path(model)] = ((spec.n_base + spec.n_novel,), "uint8")
        for name in spec.instance_gates:
            for stat in EVAL_GATE_STATS:
                paths[eval_gate_path(name, stat)] = ((gate_sizes[name],), "float32")
        for path, (shape, dtype) in paths.items():
            compression = "gzip" if dtype == "uint8" else None  # 0/1 columns shrink ~10×
            _create_growable(f, path, shape, dtype, 16, compression)
        return paths

    # ------------------------------------------------------------------ appending
    def append_step(self, row: Mapping[str, Any]) -> None:
        """Buffer one step's row. ``row[STEP]`` is required; unknown paths raise ``KeyError``."""
        self._check_open()
        unknown = set(row) - self._series.keys()
        if unknown:
            raise KeyError(f"paths not declared in the layout: {sorted(unknown)}")
        if STEP not in row:
            raise KeyError(f"a row needs {STEP!r}")
        for p, (shape, dtype) in self._series.items():
            value = row.get(p)
            if value is None:
                if p not in self._nan_rows:
                    raise KeyError(f"a row needs {p!r} (integer series have no missing value)")
                value = self._nan_rows[p]
            arr = np.asarray(value, dtype=dtype)
            if arr.shape != shape:
                raise ValueError(f"{p}: row shape {arr.shape} != declared {shape}")
            self._rows[p].append(arr[None])
        self._pending += 1
        self._maybe_flush()

    def append_block(self, block: Mapping[str, np.ndarray]) -> None:
        """Buffer ``n`` rows at once: every array has a leading axis of length ``n``."""
        self._check_open()
        unknown = set(block) - self._series.keys()
        if unknown:
            raise KeyError(f"paths not declared in the layout: {sorted(unknown)}")
        n = len(np.asarray(block[STEP]))
        for p, (shape, dtype) in self._series.items():
            if p in block:
                arr = np.asarray(block[p], dtype=dtype)
            elif p in self._nan_rows:
                arr = np.broadcast_to(self._nan_rows[p], (n, *shape))
            else:
                raise KeyError(f"a block needs {p!r}")
            if arr.shape != (n, *shape):
                raise ValueError(f"{p}: block shape {arr.shape} != {(n, *shape)}")
            self._rows[p].append(arr)
        self._pending += n
        self._maybe_flush()

    def add_eval(
        self,
        step: int,
        epoch: int,
        base_acc: float,
        novel_acc: float,
        hm: float | None = None,
        *,
        val_acc: float = float("nan"),
        correct: Mapping[str, np.ndarray] | None = None,
        gate_stats: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    ) -> None:
        """Record an evaluation; accuracies are fractions in [0, 1]; ``hm`` defaults to their harmonic mean.

        With an :class:`EvalSpec` in the layout: ``val_acc`` (NaN = not scored), ``correct`` (required: per model of
        the spec a ``(n_base + n_novel,)`` bool array) and ``gate_stats`` (per declared instance gate set, each
        statistic ``(n_gates,)``; missing ones are written as NaN).
        """
        self._check_open()
        if hm is None:
            hm = harmonic_mean(base_acc, novel_acc)
        self._evals.append((int(step), int(epoch), float(base_acc), float(novel_acc), float(hm)))
        if not self._extra_paths:
            if correct or gate_stats:
                raise ValueError("per-image correctness and gate statistics need an EvalSpec in the layout")
            return
        row: dict[str, np.ndarray] = {VAL_ACC: np.asarray(val_acc, "float64")}
        for path, (shape, dtype) in self._extra_paths.items():
            if path == VAL_ACC:
                continue
            if path.startswith("eval/correct/"):
                model = path.rsplit("/", 1)[1]
                if correct is None or model not in correct:
                    raise ValueError(f"add_eval needs the per-image correctness of {model!r}")
                value = np.asarray(correct[model], dtype)
            else:
                name, stat = path.split("/")[2:]
                value = np.asarray((gate_stats or {}).get(name, {}).get(stat, np.full(shape, np.nan)), dtype)
            if value.shape != shape:
                raise ValueError(f"{path}: shape {value.shape} != declared {shape}")
            row[path] = value
        self._eval_extras.append(row)

    def add_event(self, step: int, kind: str, message: str = "") -> None:
        """Record an event (``kind`` is usually one of :data:`EVENT_KINDS`)."""
        self._check_open()
        self._events.append((int(step), str(kind), str(message)))

    def add_tensor(self, name: str, step: int, value: np.ndarray) -> None:
        """Record a full tensor (a gradient) of a declared :class:`TensorSpec` at ``step``."""
        self._check_open()
        self._tensors[name].append((int(step), np.asarray(value, dtype=np.float32)))

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run (nothing more can be written)."""
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise RecordingError(
                f"{self.path}: the recording is already closed; write to it (and close a probe) inside its with block"
            )

    def before_close(self, callback: Callable[[], None]) -> None:
        """Have :meth:`close` call ``callback`` before its final flush, also when the run failed: a probe hands over
        the rows it still buffers, which would otherwise be lost with the exception that ends the ``with`` block
        (exactly the steps before a failure). A callback that raises makes the recording ``failed``."""
        self._close_hooks.append(callback)

    def _maybe_flush(self) -> None:
        if self._pending >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Append every buffered row, evaluation, event and tensor, then flush the file (SWMR-visible).

        A failed write (a full disk) raises a one-line :class:`RecordingError`; the writer is then broken: later
        flushes raise the same error and :meth:`close` can only record ``failed`` (or leave ``running``).
        """
        self._check_open()
        if self._broken is not None:
            raise self._broken
        need = self._flush_bytes()
        free = _free(self.path.parent)
        if 0 <= free < need + RESERVE_BYTES:
            remaining = self._rows_bytes(max(0, self._total_steps - self._length)) if self._total_steps else need
            kept = f"; the {self._length} rows flushed before stay readable" if self._length else ""
            self._broken = RecordingError(
                f"{self.path}: disk full after {self._length} rows ({_size(free)} free in {self.path.parent}, "
                f"about {_size(remaining + RESERVE_BYTES)} more needed){kept}; free some space and record again"
            )
            raise self._broken
        try:
            self._write_buffers()
        except (OSError, RuntimeError, ValueError) as exc:
            self._broken = self._write_error(exc, f"after {self._length} rows")
            raise self._broken from None
        self._last_flush = time.monotonic()

    def _rows_bytes(self, n: int, start: int = 0) -> int:
        """Bytes of the chunks that appending ``n`` rows after row ``start`` allocates across the step series."""
        total = 0
        for p, rows in self._chunk_rows.items():
            new_chunks = -(-(start + n) // rows) - (-(-start // rows))
            total += new_chunks * rows * self._series_bytes[p]
        return total

    def _flush_bytes(self) -> int:
        """An upper bound on the bytes the next flush adds to the file."""
        need = FLUSH_METADATA_BYTES + self._rows_bytes(self._pending, self._length)
        need += sum(v.nbytes + 8 for items in self._tensors.values() for _, v in items)
        need += 64 * len(self._evals) + sum(16 + len(k) + len(m) for _, k, m in self._events) * 2
        return need + (4096 if self._events else 0)

    def _write_buffers(self) -> None:
        f = self._file
        if self._pending:
            for p, ds in self._datasets.items():  # STEP is last: its length marks the committed rows
                rows = self._rows[p]
                _write_rows(ds, self._length, np.concatenate(rows) if len(rows) > 1 else rows[0])
                self._rows[p] = []
            self._length += self._pending
            self._pending = 0
        for name, items in self._tensors.items():
            if items:
                _append(self._ds(tensor_path(name)), np.stack([v for _, v in items]))
                _append(self._ds(tensor_path(name, "step")), np.array([s for s, _ in items], "int64"))
                items.clear()
        if self._eval_extras:
            for path in self._extra_paths:
                _append(self._ds(path), np.stack([row[path] for row in self._eval_extras]))
            self._eval_extras.clear()
        if self._evals:
            cols = list(zip(*self._evals, strict=True))
            for name, col in zip(EVAL_FIELDS, cols, strict=True):
                _append(self._ds(f"eval/{name}"), np.asarray(col))
            self._evals.clear()
        if self._events:
            text, spans = encode_events(self._events, start=self._ds(EVENT_TEXT).shape[0])
            _append(self._ds(EVENT_TEXT), text)  # text, then spans, then steps: the step count marks committed events
            _append(self._ds(EVENT_SPAN), spans)
            _append(self._ds(EVENT_STEP), np.array([s for s, _, _ in self._events], "int64"))
            self._events.clear()
        f.flush()

    def _ds(self, path: str) -> h5py.Dataset:
        """The dataset at ``path`` (a tensor, evaluation or event column), looked up once."""
        ds = self._other.get(path)
        if ds is None:
            ds = self._other[path] = self._file[path]
        return ds

    def close(self, status: str = "complete", error: str = "") -> None:
        """Hand over what :meth:`before_close` callbacks hold, flush, set the final ``status`` (``complete`` or
        ``failed``) and close. Idempotent.

        ``complete`` is written only after the final flush succeeded; if it fails the file ends ``failed`` with
        the error (or stays ``running`` when even that cannot be written) and the flush error is raised.
        """
        if self._closed:
            return
        if status not in STATUSES:
            raise ValueError(f"status {status!r} is not one of {STATUSES}")
        requested = status
        failure: BaseException | None = None
        try:
            for callback in self._close_hooks:
                callback()
            self.flush()
        except BaseException as exc:  # noqa: BLE001 - recorded as the failure, raised below
            failure = exc
            if status == "complete" or not error:
                status, error = "failed", _one_line(exc)
        self._closed = True
        try:  # after a disk error this usually cannot reach the disk: the file then stays ``running``
            _append(self._file[STATUS_LOG], status_attr(status)[None])  # what a live reader sees
            self._file.attrs["error"] = status_attr(error)
            self._file.attrs["finished"] = status_attr(_now())
            self._file.attrs["status"] = status_attr(status)
            self._file.flush()
        except (OSError, RuntimeError) as exc:
            failure = failure or self._write_error(exc, "while writing the final status")
        finally:
            try:
                self._file.close()
            except (OSError, RuntimeError) as exc:
                failure = failure or self._write_error(exc, "while closing")
            self._release_lock()
        if failure is not None and requested == "complete":
            raise failure

    def __enter__(self) -> RecordingWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.close("complete")
        else:
            try:
                self.close("failed", _one_line(exc))
            except WsError:
                pass  # the error being raised already says what went wrong; a disk error is raised by flush


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, WsError):
        return str(exc).splitlines()[0]
    return f"{type(exc).__name__}: {exc}".splitlines()[0] if str(exc) else type(exc).__name__


def encode_events(events: list[tuple[int, str, str]], start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Events as fixed-size arrays a SWMR reader can always read: UTF-8 ``text (bytes,)`` uint8 holding each
    event's kind then message, and ``spans (n, 3)`` int64 rows ``(offset, kind_bytes, message_bytes)`` with
    offsets counted from ``start`` (the text already written)."""
    chunks, spans, offset = [], [], start
    for _, kind, message in events:
        k, m = kind.encode("utf-8", "replace"), message.encode("utf-8", "replace")
        chunks.append(k + m)
        spans.append((offset, len(k), len(m)))
        offset += len(k) + len(m)
    text = np.frombuffer(b"".join(chunks), dtype=np.uint8)
    return text, np.array(spans, dtype=np.int64).reshape(-1, 3)


def _write_rows(ds: h5py.Dataset, start: int, rows: np.ndarray) -> None:
    """Grow ``ds`` to ``start + len(rows)`` rows and write ``rows`` there through h5py's low-level API.

    About 1.6× faster than ``ds.resize`` + ``ds[start:] = rows`` for the small blocks a recording appends.
    """
    rows = np.ascontiguousarray(rows, dtype=ds.dtype)
    ds.id.set_extent((start + len(rows), *rows.shape[1:]))
    file_space = ds.id.get_space()
    file_space.select_hyperslab((start,) + (0,) * (rows.ndim - 1), rows.shape)
    ds.id.write(h5py.h5s.create_simple(rows.shape), file_space, rows)


def _append(ds: h5py.Dataset, values: np.ndarray) -> None:
    start = ds.shape[0]
    ds.resize(start + len(values), axis=0)
    ds[start:] = values
