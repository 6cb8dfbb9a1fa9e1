"""Shared fixtures: a short recorded demo run (made once per session, in a temporary directory); threads per
xdist worker."""

from __future__ import annotations

import os
from pathlib import Path

# Under pytest-xdist every worker would start torch (and the `ws` subprocesses it runs) with one thread per core, so
# two workers on two cores ran four threads and slowed each other; each worker gets its share of the cores instead.
# Set before anything imports torch (conftest is imported first); a value the user set is kept.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1))
    for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_name, str(_share))

import pytest


@pytest.fixture(scope="session")
def demo_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete recording of 40 demo steps (seed 0, flushed every 16 steps); treat it as read-only."""
    from recorders.train.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo") / "demo.h5", steps=40, flush_every=16)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow tests first (in their own order), so that under xdist the longest ones start at once and the other
    workers take the rest around them (with ``--dist worksteal``, an idle worker steals queued tests)."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
