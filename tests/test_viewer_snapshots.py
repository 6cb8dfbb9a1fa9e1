"""Snapshots of the run view, the compare view and the stats screen at a fixed terminal size (deterministic
synthetic recordings). Update with ``pytest tests/test_viewer_snapshots.py --snapshot-update`` after checking the
new SVGs by eye."""

from __future__ import annotations

from pathlib import Path

from synthetic import write_group, write_run
from test_viewer import settle

from workstation.app.app import WsApp

SIZE = (110, 34)


async def _settle(pilot) -> None:  # noqa: ANN001 - textual's Pilot
    await settle(pilot.app, pilot)


def test_run_view(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    path = write_run(tmp_path / "run.h5", n_steps=1200, n_gates=12, onset_step=500, eval_every=200)

    async def run_before(pilot) -> None:  # noqa: ANN001
        await _settle(pilot)
        await pilot.press("L", "L", "L", "right", "right")
        await _settle(pilot)

    assert snap_compare(WsApp([path]), terminal_size=SIZE, run_before=run_before)


def test_compare_view(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    a = write_run(tmp_path / "collapsed.h5", n_steps=800, n_gates=8, onset_step=200, seed=1)
    b = write_run(tmp_path / "adaptive.h5", behaviour="adaptive", n_steps=800, n_gates=8, seed=2)

    async def run_before(pilot) -> None:  # noqa: ANN001
        await _settle(pilot)
        await pilot.press("L", "L", "L")
        await _settle(pilot)

    assert snap_compare(WsApp([a, b], compare=True), terminal_size=SIZE, run_before=run_before)


def test_stats_screen(snap_compare, tmp_path: Path) -> None:  # noqa: ANN001
    paths = write_group(tmp_path, "gated", [0, 1, 2, 3], [0.70, 0.72, 0.71, 0.74], n_steps=100) + write_group(
        tmp_path, "plain", [0, 1, 2, 3], [0.60, 0.62, 0.65, 0.61], n_steps=100
    )
    app = WsApp(sorted(paths))

    async def run_before(pilot) -> None:  # noqa: ANN001
        await _settle(pilot)
        await pilot.press("s")
        await _settle(pilot)

    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)
