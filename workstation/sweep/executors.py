"""Executors run one `ws record` process per run and hand back a :class:`ProcessResult` future.

- :class:`LocalExecutor`: ``jobs`` runs at once on this machine; CPU threads are shared out
  (``OMP_NUM_THREADS = cores // jobs``) and, on a multi-GPU machine, each running job gets its own GPU through
  ``CUDA_VISIBLE_DEVICES``. Children die with the driver (``PR_SET_PDEATHSIG`` on Linux), so a killed batch leaves
  no orphan writing a recording.
- :class:`RayExecutor`: each run is a Ray task asking for the sweep's ``cpus``/``gpus``; without an address it
  starts a local Ray instance. Recordings reach the driver through a shared path: the task writes to the run's
  absolute output path, which must be visible to every worker (see docs/batch.md).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from recorders.format.errors import ConfigError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class ProcessResult:
    """What one run's process left: exit code, seconds it ran, and the last line it printed to stderr."""

    run_id: str
    returncode: int
    duration: float
    error: str


class Executor(Protocol):
    def submit(self, run_id: str, args: list[str], env: dict[str, str]) -> Future[ProcessResult]: ...
    def interrupt(self) -> None: ...
    def shutdown(self) -> None: ...


def record_args(config_file: Path, out: Path) -> list[str]:
    """Arguments of ``ws record`` for one run (the interpreter is prepended where the run executes)."""
    return ["-m", "workstation", "record", "--config", str(config_file), "--out", str(out)]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def run_process(run_id: str, args: list[str], env: dict[str, str], on_start: Any = None) -> ProcessResult:
    """Run ``python args...`` to the end; the error is the last non-empty stderr line (empty on success)."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )
    if on_start is not None:
        on_start(proc)
    _, stderr = proc.communicate()
    lines = [line.strip() for line in (stderr or "").splitlines() if line.strip()]
    error = "" if proc.returncode == 0 else (lines[-1] if lines else f"exit code {proc.returncode}")
    return ProcessResult(run_id, proc.returncode, time.monotonic() - start, error)


def gpu_ids() -> list[str]:
    """GPUs this machine offers, from ``CUDA_VISIBLE_DEVICES`` or ``nvidia-smi -L`` (none without a GPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [g for g in visible.split(",") if g.strip() and g.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class LocalExecutor:
    """Up to ``jobs`` runs at once, one process each, threads and GPUs shared out between them."""

    def __init__(self, jobs: int) -> None:
        if jobs < 1:
            raise ConfigError(f"--jobs {jobs} must be at least 1")
        self.jobs = jobs
        self.threads = max(1, (os.cpu_count() or 1) // jobs)
        self._gpus = gpu_ids()
        self._free_gpus = list(self._gpus)
        self._lock = threading.Lock()
        self._procs: set[subprocess.Popen[str]] = set()
        self._pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="ws-run")

    def submit(self, run_id: str, args: list[str], env: dict[str, str]) -> Future[ProcessResult]:
        return self._pool.submit(self._run, run_id, args, env)

    def _run(self, run_id: str, args: list[str], env: dict[str, str]) -> ProcessResult:
        with self._lock:
            gpu = self._free_gpus.pop(0) if self._free_gpus else None
        child_env = {**env, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads)}
        if gpu is not None:
            child_env["CUDA_VISIBLE_DEVICES"] = gpu
        elif self._gpus:  # more jobs than GPUs: this one shares the GPUs (their count caps useful jobs)
            child_env["CUDA_VISIBLE_DEVICES"] = ",".join(self._gpus)
        proc_ref: list[subprocess.Popen[str]] = []

        def started(proc: subprocess.Popen[str]) -> None:
            proc_ref.append(proc)
            with self._lock:
                self._procs.add(proc)

        try:
            return run_process(run_id, args, child_env, on_start=started)
        finally:
            with self._lock:
                self._procs.difference_update(proc_ref)
                if gpu is not None:
                    self._free_gpus.append(gpu)

    def interrupt(self) -> None:
        """Stop queued runs and send SIGINT to running ones (they record status ``failed``, then exit)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 15
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


def _ray_task(run_id: str, args: list[str], env: dict[str, str]) -> ProcessResult:
    """Executed on a Ray worker: the worker's own interpreter runs ``ws record``."""
    return run_process(run_id, args, env)


class RayExecutor:
    """Each run is a Ray task with the sweep's resources; ``address=None`` starts a local instance."""

    def __init__(self, address: str | None, cpus: float, gpus: float, local_cpus: int | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray; install it with pip install 'ws[ray]'") from None
        self._ray = ray
        self._cpus = cpus
        self._started = not ray.is_initialized()
        if self._started:
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = local_cpus or os.cpu_count() or 1
            else:
                kwargs["address"] = address
            try:
                ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(
                    f"cannot reach Ray at {address or 'a new local instance'} "
                    f"({str(exc).splitlines()[0]}); check --address"
                ) from None
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_ray_task)
        self._refs: list[Any] = []

    def submit(self, run_id: str, args: list[str], env: dict[str, str]) -> Future[ProcessResult]:
        ref = self._remote.remote(run_id, args, {**env, "OMP_NUM_THREADS": str(max(1, int(self._cpus)))})
        self._refs.append(ref)
        return ref.future()

    def interrupt(self) -> None:
        for ref in self._refs:
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - a finished task cannot be cancelled; nothing to do
                pass

    def shutdown(self) -> None:
        self._refs.clear()
        if self._started:
            self._ray.shutdown()
