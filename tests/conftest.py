"""Shared fixtures: a short recorded demo run (made once per session, in a temporary directory)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete recording of 40 demo steps (seed 0, flushed every 16 steps); treat it as read-only."""
    from recorders.train.demo import run_demo

    return run_demo(tmp_path_factory.mktemp("demo") / "demo.h5", steps=40, flush_every=16)
