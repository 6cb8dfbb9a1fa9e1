"""Run a sweep: reconcile the manifest with the recordings on disk, execute what is left, show live progress.

Resuming is by construction: each run has one recording path (``<sweep>/<run id>.h5``), a run counts as done
only when that file's ``status`` is ``complete``, and anything else (pending, failed, interrupted, a partial
file left by a killed batch) is run again — failed runs only with ``retry_failed``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from recorders.format import Recording
from recorders.format.errors import RecordingError
from workstation.safe_text import clean
from workstation.sweep.executors import Executor, ProcessResult, record_args
from workstation.sweep.lock import SweepLock
from workstation.sweep.manifest import Manifest, RunEntry, recording_state
from workstation.sweep.spec import PlannedRun, SweepSpec

_STYLE = {"pending": "dim", "running": "cyan", "complete": "green", "failed": "red", "interrupted": "yellow"}


@dataclass
class SweepOutcome:
    """How a sweep ended: the manifest, and the run ids skipped (already complete) and executed."""

    manifest: Manifest
    skipped: list[str]
    executed: list[str]

    def count(self, status: str) -> int:
        return sum(1 for e in self.manifest.runs.values() if e.status == status)


def plan(spec: SweepSpec, retry_failed: bool = True) -> tuple[Manifest, list[PlannedRun], list[str]]:
    """The manifest reconciled with disk, the runs still to execute, and the ids already complete."""
    manifest = Manifest.load(spec.directory)
    manifest.spec = str(spec.path)
    todo, done = [], []
    for run in spec.runs:
        entry = manifest.runs.get(run.run_id) or RunEntry(run.run_id, run.overrides, run.labels)
        entry.config, entry.labels = run.overrides, run.labels
        entry.path = manifest.recording(run.run_id).name
        manifest.runs[run.run_id] = entry
        on_disk, hm = recording_state(manifest.recording(run.run_id))
        if on_disk == "complete":
            entry.status, entry.final_hm, entry.error = "complete", hm, ""
            done.append(run.run_id)
            continue
        if entry.status in ("complete", "running"):  # a partial file, or a batch killed while it ran
            entry.status = "interrupted"
        if entry.status == "failed" and not retry_failed:
            continue
        todo.append(run)
    return manifest, todo, done


def write_run_config(directory: Path, run: PlannedRun) -> Path:
    """``<sweep>/configs/<id>.toml``: the run's keys, so ``ws record --config`` reproduces it by hand."""
    path = directory / "configs" / f"{run.run_id}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines, tables = [], []
    for key, value in sorted(run.overrides.items()):
        if isinstance(value, dict):
            tables.append(f"\n[{key}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in sorted(value.items())))
        elif value is not None:
            lines.append(f"{key} = {_toml(value)}\n")
    path.write_text("".join(lines) + "".join(tables), encoding="utf-8")
    return path


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string


def execute(
    spec: SweepSpec,
    executor: Executor,
    *,
    retry_failed: bool = True,
    console: Console | None = None,
    poll_seconds: float = 0.5,
    on_update: Callable[[Manifest], None] | None = None,
) -> SweepOutcome:
    """Run every run not yet complete, holding the sweep's lock (a second driver gets a one-line error, exit 2).

    Ctrl-C, or any error in the driver itself, stops the queued runs and the running ones (they record status
    ``failed``), marks every run not complete on disk ``interrupted`` and re-raises.
    """
    with SweepLock(spec.directory):
        return _execute(spec, executor, retry_failed, console or Console(stderr=True), poll_seconds, on_update)


def _execute(
    spec: SweepSpec,
    executor: Executor,
    retry_failed: bool,
    console: Console,
    poll_seconds: float,
    on_update: Callable[[Manifest], None] | None,
) -> SweepOutcome:
    _remove_stubs(spec.directory)
    manifest, todo, done = plan(spec, retry_failed)
    manifest.save()
    futures: dict[Future[ProcessResult], str] = {}
    started: dict[str, float] = {}
    try:
        for run in todo:
            config_file = write_run_config(spec.directory, run)
            out = manifest.recording(run.run_id).resolve()
            out.unlink(missing_ok=True)  # a partial recording of an earlier attempt: this run replaces it
            futures[executor.submit(run.run_id, record_args(config_file.resolve(), out), {})] = run.run_id
            manifest.runs[run.run_id].status = "pending"
        manifest.save()
        outcome = SweepOutcome(manifest, skipped=done, executed=[r.run_id for r in todo])
        with Live(_table(manifest, started), console=console, refresh_per_second=2, transient=False) as live:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, timeout=poll_seconds, return_when=FIRST_COMPLETED)
                for fut in finished:
                    _finish(manifest, futures[fut], fut)
                _mark_started(manifest, started, futures, pending)
                manifest.save()
                if on_update:
                    on_update(manifest)
                live.update(_table(manifest, started))
    except BaseException as exc:
        executor.interrupt()  # queued runs never start, running ones stop: nothing trains for a dead driver
        reason = "interrupted by Ctrl-C" if isinstance(exc, KeyboardInterrupt) else f"the driver stopped: {exc!r}"
        for run_id in futures.values():
            entry = manifest.runs[run_id]
            if entry.status in ("pending", "running"):
                status, hm = recording_state(manifest.recording(run_id))
                entry.status, entry.final_hm = ("complete", hm) if status == "complete" else ("interrupted", None)
                entry.error = "" if status == "complete" else reason.splitlines()[0]
        try:
            manifest.save()
        except OSError:
            pass  # the next driver rebuilds the manifest from the recordings
        raise
    finally:
        executor.shutdown()
    return outcome


def _remove_stubs(directory: Path) -> None:
    """Delete the temporary files killed processes left: a recording's writer stopped while creating it
    (``.<run>.h5.<pid>.tmp``), a driver stopped inside an atomic write of the manifest or of a run config
    (``.<name>.<random>.tmp``, in the sweep folder and ``configs/``). Only the lock holder runs this, before it
    starts any run, so none of them belongs to a live process."""
    for pattern in (".*.tmp", "configs/.*.tmp"):
        for stub in directory.glob(pattern):
            stub.unlink(missing_ok=True)


def _mark_started(
    manifest: Manifest,
    started: dict[str, float],
    futures: dict[Future[ProcessResult], str],
    pending: set[Future[ProcessResult]],
) -> None:
    """Runs whose process has begun (a local worker took it, or its recording appeared) become ``running``."""
    for fut in pending:
        run_id = futures[fut]
        if run_id not in started and (fut.running() or manifest.recording(run_id).exists()):
            started[run_id] = time.monotonic()
            manifest.runs[run_id].status = "running"


def _finish(manifest: Manifest, run_id: str, fut: Future[ProcessResult]) -> None:
    entry = manifest.runs[run_id]
    entry.attempts += 1
    try:
        result = fut.result()
    except Exception as exc:  # noqa: BLE001 - an executor failure is this run's failure, not the sweep's
        entry.status, entry.error = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
        return
    entry.duration = round(result.duration, 2)
    status, hm = recording_state(manifest.recording(run_id))
    if result.returncode == 0 and status == "complete":
        entry.status, entry.error, entry.final_hm = "complete", "", hm
    elif result.returncode in (130, -2):
        entry.status, entry.error = "interrupted", result.error or "interrupted"
    else:
        entry.status = "failed"
        entry.error = result.error or f"recording ended with status {status}"


def _progress(path: Path) -> tuple[int, int | None]:
    """Committed steps of a live recording and its planned total (``None`` when it does not say)."""
    try:
        with Recording.open(path) as rec:
            total = int(rec.attrs.get("total_steps", 0))
            return rec.n_steps, total or None
    except (RecordingError, OSError, KeyError, ValueError):
        return 0, None


def _table(manifest: Manifest, started: dict[str, float]) -> Group:
    table = Table(title=escape(clean(f"sweep {manifest.directory}")), title_justify="left")
    for column in ("run", "labels", "status", "step", "ETA", "final HM"):
        table.add_column(column, justify="right" if column in ("step", "ETA", "final HM") else "left")
    for entry in manifest.runs.values():
        step, eta = "", ""
        if entry.status == "running":
            n, total = _progress(manifest.recording(entry.id))
            step = f"{n}" + (f"/{total}" if total else "")
            if total and n and entry.id in started:
                elapsed = time.monotonic() - started[entry.id]
                eta = f"{elapsed / n * (total - n):.0f}s"
        hm = "" if entry.final_hm is None else f"{entry.final_hm:.4f}"
        labels = ", ".join(f"{k}={v}" for k, v in entry.labels.items())
        status = f"[{_STYLE[entry.status]}]{entry.status}[/]"
        table.add_row(escape(clean(entry.id)), escape(clean(labels)), status, step, eta, hm)
    counts = {s: sum(e.status == s for e in manifest.runs.values()) for s in _STYLE}
    footer = "  ".join(f"{s}: {n}" for s, n in counts.items() if n)
    return Group(table, footer)
