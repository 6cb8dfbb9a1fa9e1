"""`ws view` driven by Textual's pilot: cursor, events, compare sync, stats, live following, bad files, CLI."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from synthetic import GATES, write_group, write_run, write_two_gate_sets
from textual._compositor import Compositor
from textual.widgets import DataTable
from textual.worker import WorkerCancelled

import analyses.diagnostics
from recorders.format import (
    EPOCH,
    LR,
    STEP,
    GateSetSpec,
    Layout,
    Recording,
    RecordingWriter,
    gate_path,
    loss_path,
)
from workstation.app.app import WsApp
from workstation.app.screens.compare import CompareScreen
from workstation.app.screens.recordings import RecordingsScreen
from workstation.app.screens.run import RunScreen
from workstation.app.screens.stats import StatsScreen
from workstation.app.widgets.gatebars import GateBars
from workstation.app.widgets.plot import Heatmap, StepPlot, TimePlot, fmt
from workstation.app.widgets.timeline import Timeline

SIZE = (120, 40)


async def settle(app: WsApp, pilot) -> None:  # noqa: ANN001 - textual's Pilot
    """Let background loads finish and the screen repaint (a load superseded by a newer one is cancelled)."""
    for _ in range(20):
        with contextlib.suppress(WorkerCancelled):
            await app.workers.wait_for_complete()
        await pilot.pause()
        if not any(worker.is_running for worker in app.workers):
            await pilot.pause()
            return


def file_gates(path: Path, row: int) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f[gate_path(GATES, "value")][row], f[gate_path(GATES, "dsigmoid")][row]


async def test_cursor_keys_move_the_step_and_show_the_file_gates(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.h5", n_steps=600, n_gates=6, onset_step=300)
    app = WsApp([path])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        expected = 0
        for key, delta in [
            ("right", 1),
            ("l", 1),
            ("right", 1),
            ("L", 100),
            ("shift+right", 100),
            ("left", -1),
            ("h", -1),
            ("H", -100),
            ("shift+left", -100),
        ]:
            await pilot.press(key)
            expected = min(max(expected + delta, 0), 599)
            assert screen.row == expected, key
        await pilot.press("L", "L", "L")
        await pilot.pause()
        bars = screen.query_one(GateBars)
        assert screen.row == 301
        value, dsig = file_gates(path, 301)
        np.testing.assert_array_equal(bars.gates["value"], value)
        np.testing.assert_array_equal(bars.gates["dsigmoid"], dsig)
        line = "".join(s.text for s in bars.line_text(2, 60))
        assert f"{value[2]:.3f}" in line and f"{dsig[2]:.2e}" in line
        assert "step 301 " in str(screen.query_one(Timeline).status)
        await pilot.press("end")
        assert screen.row == 599
        await pilot.press("home")
        assert screen.row == 0


async def test_events_jump_and_timeline_click(tmp_path: Path) -> None:
    layout = Layout(gate_sets=(GateSetSpec("g", 2, "length"),))
    path = tmp_path / "events.h5"
    with RecordingWriter(path, layout, config={}, method="demo", seed=1, device="cpu") as w:
        n = 400
        w.append_block(
            {
                STEP: np.arange(n) * 2,
                EPOCH: np.arange(n) // 100,
                LR: np.full(n, 0.1),
                loss_path("total"): np.linspace(2, 1, n),
                gate_path("g", "value"): np.full((n, 2), 0.5),
            }
        )
        for epoch in range(4):
            w.add_event(epoch * 200 + 198, "epoch_end", f"epoch {epoch}")
        w.add_event(501, "nonfinite", "loss is NaN")
    app = WsApp([path])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        await pilot.press("right_square_bracket")
        assert screen.row == 99  # step 198
        await pilot.press("right_square_bracket", "right_square_bracket")
        assert screen.row == 250  # step 500 (the last step <= 501)
        await pilot.press("left_square_bracket")
        assert screen.row == 199
        timeline = screen.query_one(Timeline)
        await pilot.click(Timeline, offset=(timeline.size.width // 2, 1))
        assert screen.row == pytest.approx(200, abs=n // timeline.size.width + 1)


async def test_compare_keeps_cursors_in_sync_by_step_and_fraction(tmp_path: Path) -> None:
    short = write_run(tmp_path / "short.h5", n_steps=300, n_gates=4, seed=1)
    long = write_run(tmp_path / "long.h5", n_steps=900, n_gates=4, seed=2)
    app = WsApp([short, long], compare=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        await pilot.press("right", "right", "L")
        assert screen.rows() == [102, 102]
        bars = [screen.query_one(f"#gates-{i}", GateBars) for i in (0, 1)]
        np.testing.assert_array_equal(bars[1].gates["value"], file_gates(long, 102)[0])
        await pilot.press("f")
        await settle(app, pilot)
        expected = round(102 / 299 * 899)
        assert screen.rows() == [102, expected]
        np.testing.assert_array_equal(bars[1].gates["value"], file_gates(long, expected)[0])
        np.testing.assert_array_equal(bars[0].gates["value"], file_gates(short, 102)[0])


async def test_stats_screen_shows_the_numbers_of_analyses_compare(tmp_path: Path) -> None:
    from analyses.stats import compare

    paths = write_group(tmp_path, "gated", [0, 1, 2], [0.70, 0.72, 0.71], n_steps=200) + write_group(
        tmp_path, "plain", [0, 1, 2], [0.60, 0.62, 0.65], n_steps=200
    )
    report = compare([tmp_path], "variant", "final_hm")
    app = WsApp(paths)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        app.open_stats(paths)
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, StatsScreen)
        groups = screen.query_one("#stats-groups", DataTable)
        shown = {groups.get_row_at(i)[0]: groups.get_row_at(i) for i in range(groups.row_count)}
        for name, hms in (("gated", [0.70, 0.72, 0.71]), ("plain", [0.60, 0.62, 0.65])):
            g = report.groups[name]
            assert g.mean == pytest.approx(np.mean(hms)) and g.std == pytest.approx(np.std(hms, ddof=1))
            assert shown[name][4] == f"{fmt(g.mean)} ± {fmt(g.std)}"
            assert shown[name][5] == f"[{fmt(g.ci_low)}, {fmt(g.ci_high)}]"
        table = screen.query_one("#stats-table", DataTable)
        (row,) = report.rows
        cells = table.get_row_at(0)
        assert cells[0] == "gated vs plain"
        assert cells[2] == fmt(row.welch_p) and cells[7].startswith(fmt(row.p_adjusted))
        warnings = str(screen.query_one("#stats-warnings").render())
        assert "cannot give p < 0.05" in warnings  # the small-n warning: 3 vs 3 seeds


async def test_a_growing_file_shows_new_steps(tmp_path: Path) -> None:
    layout = Layout(gate_sets=(GateSetSpec("g", 3, "length"),))
    path = tmp_path / "live.h5"
    writer = RecordingWriter(path, layout, config={}, method="demo", seed=0, device="cpu", flush_every=10_000)

    def append(start: int, stop: int) -> None:
        for s in range(start, stop):
            writer.append_step({STEP: s, EPOCH: 0, LR: 0.1, gate_path("g", "value"): np.full(3, s / 1000)})
        writer.flush()

    try:
        append(0, 50)
        app = WsApp([path], live_interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            await settle(app, pilot)
            screen = app.screen
            assert isinstance(screen, RunScreen) and screen.n_rows == 50
            await pilot.press("p")  # pin the cursor to the newest step
            append(50, 130)
            await pilot.pause(0.3)
            await settle(app, pilot)
            assert screen.n_rows == 130 and screen.row == 129
            np.testing.assert_allclose(screen.query_one(GateBars).gates["value"], 0.129, rtol=1e-6)
            assert "row 130/130" in str(screen.query_one(Timeline).status)
    finally:
        writer.close()


@pytest.mark.parametrize("kind", ["garbage", "not-ws"])
async def test_bad_file_notifies_and_the_app_keeps_running(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.h5"
    if kind == "garbage":
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # an HDF5 signature, then nothing
    else:
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    good = write_run(tmp_path / "good.h5", n_steps=50)
    app = WsApp([path, good])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert not app.open_run(path)
        await pilot.pause()
        messages = [n.message for n in app._notifications]
        assert any(str(path) in m and n.severity == "error" for n, m in zip(app._notifications, messages, strict=True))
        assert isinstance(app.screen, RecordingsScreen) and app.is_running
        assert app.open_run(good)  # and it still opens good files
        await settle(app, pilot)
        assert isinstance(app.screen, RunScreen)


async def test_help_zoom_palette_and_svg_export(tmp_path: Path) -> None:
    path = write_run(tmp_path / "run.h5", n_steps=100)
    app = WsApp([path], export_dir=tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        await pilot.press("tab")
        await pilot.press("z")
        assert screen.maximized is not None
        await pilot.pause()
        assert screen.query_one(Timeline).region.height == 2  # the full-screen pane keeps the step in view
        await pilot.press("z")
        assert screen.maximized is None
        await pilot.press("f1")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        assert app.screen is screen
        await pilot.press("escape")  # from the first run view to the recordings pane, and into the run again
        await settle(app, pilot)
        assert isinstance(app.screen, RecordingsScreen)
        await pilot.press("down", "down", "down", "enter")  # method, variant, then the run
        await settle(app, pilot)
        assert isinstance(app.screen, RunScreen) and app.screen.run.rec.path == path
        screen = app.screen
        names = [name for name, _, _ in app.ws_commands()]
        assert {"open run.h5", "stats", "export SVG"} <= set(names)
        await pilot.press("ctrl+s")
        await pilot.pause()
        (svg,) = tmp_path.glob("*.svg")
        assert "<svg" in svg.read_text()[:200]


def test_view_imports_no_torch() -> None:
    code = (
        "import sys, workstation.cli, workstation.app.app, workstation.app.screens.run, "
        "workstation.app.screens.compare, workstation.app.screens.stats; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["view", "missing.h5"], "no such file or directory"),
        (["view", "--compare", "{good}"], "--compare takes 2 to 4 recordings"),
        (["view", "--sync", "nope", "{good}"], "--sync 'nope' is not valid"),
    ],
)
def test_cli_errors_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    good = write_run(tmp_path / "good.h5", n_steps=20)
    argv = [a.format(good=good) for a in args]
    out = subprocess.run([sys.executable, "-m", "workstation", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr


async def test_a_cursor_step_repaints_part_of_the_screen_and_diagnostics_wait_for_the_plots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Responsiveness guards: a cursor step never re-composes the whole screen (a repainting reactive on the
    screen did, costing ~100 ms a step on a large run), and the diagnostics start only once every plot has its
    first data (on two cores they would otherwise delay the first paint)."""
    seen_at_start: list[bool] = []
    real_diagnose = analyses.diagnostics.diagnose

    def diagnose(rec, *args, **kwargs):  # noqa: ANN001, ANN202
        seen_at_start.append(all(p.loaded for p in app.screen.query(StepPlot)))
        return real_diagnose(rec, *args, **kwargs)

    monkeypatch.setattr(analyses.diagnostics, "diagnose", diagnose)
    path = write_run(tmp_path / "run.h5", n_steps=3000, n_gates=6, onset_step=1000)
    app = WsApp([path])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        assert seen_at_start == [True]
        full: list[int] = []
        real_full = Compositor.render_full_update
        monkeypatch.setattr(
            Compositor, "render_full_update", lambda self, *a, **k: full.append(1) or real_full(self, *a, **k)
        )
        partial = 0
        real_partial = Compositor.render_partial_update

        def counting_partial(self):  # noqa: ANN001, ANN202
            nonlocal partial
            partial += 1
            return real_partial(self)

        monkeypatch.setattr(Compositor, "render_partial_update", counting_partial)
        for key in ("right", "L", "end"):
            await pilot.press(key)
            await pilot.pause()
        assert app.screen.row == 2999
        assert partial >= 3 and not full


def record_notifications(app: WsApp, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every notification message from now on (the app's own list drops them as they expire)."""
    seen: list[str] = []
    real = app.notify

    def notify(message: str, *args: object, **kwargs: object) -> None:
        seen.append(message)
        real(message, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(app, "notify", notify)
    return seen


async def _export_and_wait(app: WsApp, pilot, seen: list[str]) -> list[str]:  # noqa: ANN001 - textual's Pilot
    """Press ctrl+e and let the export worker finish; the notification messages since the press."""
    before = len(seen)
    await pilot.press("ctrl+e")
    await settle(app, pilot)
    return seen[before:]


async def test_ctrl_e_exports_the_focused_panes_plot_through_analyses_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from analyses.figures import plot_runs

    path = write_run(tmp_path / "run.h5", n_steps=400, n_gates=4, eval_every=100)
    out_dir = tmp_path / "exports"
    app = WsApp([path], export_dir=out_dir)
    seen = record_notifications(app, monkeypatch)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        for pane, kind in (("#heatmap-pane", "gates"), ("#ratio-pane", "ratio"), ("#losses-pane", "accuracy")):
            screen.set_focus(screen.query_one(pane))
            messages = await _export_and_wait(app, pilot, seen)
            png = out_dir / f"run-{kind}.png"
            assert any(m == f"saved {png}" for m in messages), messages
            # the same figure analyses.figures draws for this recording, kind and shown gate set (same bytes:
            # deterministic PNG)
            reference = plot_runs([path], kind, tmp_path / f"ref-{kind}.png", by="method", gate_set=screen.gate_set)
            assert png.read_bytes() == reference.read_bytes()
        screen.set_focus(screen.query_one("#grads-pane"))
        messages = await _export_and_wait(app, pilot, seen)
        assert any("has no figure" in m for m in messages)
        assert sorted(p.name for p in out_dir.iterdir()) == ["run-accuracy.png", "run-gates.png", "run-ratio.png"]
        assert "export PNG" in [name for name, _, _ in app.ws_commands()]


async def test_compare_export_draws_one_curve_per_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import analyses.figures

    a = write_run(tmp_path / "a.h5", n_steps=300, seed=1, config={"variant": "collapsed"})
    b = write_run(tmp_path / "b.h5", behaviour="adaptive", n_steps=300, seed=1, config={"variant": "adaptive"})
    calls: list[tuple[list[Path], str, str]] = []
    real = analyses.figures.plot_runs

    def recording_plot_runs(paths, kind, out, *, by="method", **kwargs):  # noqa: ANN001, ANN202
        calls.append((list(paths), kind, by))
        return real(paths, kind, out, by=by, **kwargs)

    monkeypatch.setattr(analyses.figures, "plot_runs", recording_plot_runs)
    app = WsApp([a, b], compare=True, export_dir=tmp_path)
    seen = record_notifications(app, monkeypatch)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        messages = await _export_and_wait(app, pilot, seen)  # nothing focused: the ratio of every run
    assert calls == [([a, b], "ratio", "variant")]  # same method and seed: only the variant tells them apart
    assert f"saved {tmp_path / 'compare-ratio.png'}" in messages
    assert (tmp_path / "compare-ratio.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_large_runs_are_diagnosed_in_a_child_process_inside_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside a running Textual app (stderr captured) the child process starts and its diagnostics arrive."""
    import workstation.app.data as data

    path = write_run(tmp_path / "run.h5", n_steps=1500, n_gates=6, onset_step=500)
    with Recording.open(path) as rec:
        want = analyses.diagnostics.diagnose(rec)
    monkeypatch.setattr(data, "PROCESS_CELLS", 0)
    calls: list[Path] = []
    real = data.diagnose_in_subprocess
    monkeypatch.setattr(data, "diagnose_in_subprocess", lambda p: calls.append(p) or real(p))
    app = WsApp([path])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        got = app.screen.diagnostics[0]
    assert calls == [path]
    np.testing.assert_array_equal(got.gate_sets[GATES].ratio, want.gate_sets[GATES].ratio)
    assert got.gate_sets[GATES].onset_step == want.gate_sets[GATES].onset_step


async def test_g_in_compare_moves_each_run_to_its_next_gate_set(tmp_path: Path) -> None:
    two = tmp_path / "bimaple.h5"
    want = write_two_gate_sets(two)
    one = write_run(tmp_path / "coop.h5", n_steps=300, n_gates=4, seed=1)
    app = WsApp([two, one], compare=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, CompareScreen)
        titles = lambda: [screen.query_one(f"#heatmap-{i}").border_title for i in (0, 1)]  # noqa: E731
        bars = [screen.query_one(f"#gates-{i}", GateBars) for i in (0, 1)]
        overlay = screen.query_one("#overlay", TimePlot)
        assert titles() == ["length_gates_0 × step", f"{GATES} × step"]
        assert np.nanmax(overlay.payload[0].columns.hi) == pytest.approx(want["length_gates_0"][1].max(), rel=1e-5)
        await pilot.press("L", "right")
        for name in ("depth_gates", "length_gates_0"):  # g cycles: the second set, then back to the first
            await pilot.press("g")
            await settle(app, pilot)
            assert titles() == [f"{name} × step", f"{GATES} × step"]
            value, ratio = want[name]
            np.testing.assert_allclose(bars[0].gates["value"], value[101], rtol=1e-6)
            np.testing.assert_array_equal(bars[1].gates["value"], file_gates(one, 101)[0])
            assert screen.query_one("#heatmap-0 Heatmap", Heatmap).payload.shape[0] == len(value[0])
            assert np.nanmax(overlay.payload[0].columns.hi) == pytest.approx(ratio.max(), rel=1e-5)


async def test_export_draws_the_gate_set_the_run_screen_shows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from analyses.figures import plot_runs

    path = tmp_path / "bimaple.h5"
    write_two_gate_sets(path)
    app = WsApp([path], export_dir=tmp_path / "exports")
    seen = record_notifications(app, monkeypatch)
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        await pilot.press("g")
        await settle(app, pilot)
        app.screen.set_focus(app.screen.query_one("#heatmap-pane"))
        messages = await _export_and_wait(app, pilot, seen)
    png = tmp_path / "exports" / "bimaple-gates.png"
    assert any(m == f"saved {png}" for m in messages), messages
    second = plot_runs([path], "gates", tmp_path / "second.png", gate_set="depth_gates")
    first = plot_runs([path], "gates", tmp_path / "first.png")
    assert png.read_bytes() == second.read_bytes() != first.read_bytes()


def tree_leaves(screen: RecordingsScreen) -> dict[Path, str]:
    """The recordings pane's leaves: path → label."""
    from textual.widgets import Tree

    out: dict[Path, str] = {}
    stack = [screen.query_one(Tree).root]
    while stack:
        node = stack.pop()
        if node.data is not None:
            out[node.data] = str(node.label)
        stack.extend(node.children)
    return out


async def test_r_rescans_the_sources_reading_only_new_or_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import workstation.app.screens.recordings as recordings

    monkeypatch.setattr(recordings, "RESCAN_SECONDS", 3600.0)  # only r rescans here
    reads: list[Path] = []
    real_read = recordings.Entry.read
    monkeypatch.setattr(recordings.Entry, "read", lambda path: reads.append(path) or real_read(path))
    runs = tmp_path / "runs"
    runs.mkdir()
    a = write_run(runs / "a.h5", n_steps=50, seed=0)
    b = write_run(runs / "b.h5", n_steps=50, seed=1)
    app = WsApp([a, b], sources=[runs])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, RecordingsScreen) and set(tree_leaves(screen)) == {a, b}
        await pilot.press("down", "down", "down", "m")  # method, variant, then seed 0: mark a
        assert screen.marked == [a]

        c = write_run(runs / "c.h5", n_steps=50, seed=2)
        reads.clear()
        await pilot.press("r")
        await settle(app, pilot)
        assert reads == [c]  # a and b are unchanged: their entries come from the cache
        leaves = tree_leaves(screen)
        assert set(leaves) == set(runs.glob("*.h5")) == {a, b, c}
        assert leaves[a].startswith("✓ ") and screen.marked == [a]
        names = {name for name, _, _ in app.ws_commands()}
        assert {f"open {p.name}" for p in runs.glob("*.h5")} <= names
        assert "compare all" in names  # over the three known now

        b.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)  # b is damaged (size and mtime change)
        await pilot.press("r")
        await settle(app, pilot)
        assert "unreadable" in tree_leaves(screen)[b] and screen.entries[b].error
        assert screen.query_one("Tree").cursor_node.data == a  # the unreadable leaf above it moved its line

        a.unlink()
        await pilot.press("r")
        await settle(app, pilot)
        assert set(tree_leaves(screen)) == {b, c} and screen.marked == []
        assert "open a.h5" not in {name for name, _, _ in app.ws_commands()}


async def test_the_recordings_pane_rescans_by_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import workstation.app.screens.recordings as recordings

    monkeypatch.setattr(recordings, "RESCAN_SECONDS", 0.05)
    a = write_run(tmp_path / "a.h5", n_steps=50, seed=0)
    b = write_run(tmp_path / "b.h5", n_steps=50, seed=1)
    app = WsApp([a, b], sources=[tmp_path])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        c = write_run(tmp_path / "c.h5", n_steps=50, seed=2)
        await pilot.pause(0.3)
        await settle(app, pilot)
        assert set(tree_leaves(app.screen)) == {a, b, c}  # type: ignore[arg-type]
        assert c in app.paths


def test_view_without_paths_needs_a_recordings_directory(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "workstation", "view"], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "recordings" in out.stderr and "ws record" in out.stderr


def test_view_without_paths_opens_recordings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from workstation.cli import app as cli

    (tmp_path / "recordings" / "sweep").mkdir(parents=True)
    runs = [write_run(tmp_path / "recordings" / name, n_steps=20) for name in ("a.h5", "sweep/b.h5")]
    got: list[WsApp] = []
    monkeypatch.setattr(WsApp, "run", lambda self: got.append(self))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["view"])
    assert result.exit_code == 0, result.output
    (app,) = got
    assert app.catalog.sources == [Path("recordings")]
    assert [p.resolve() for p in app.paths] == [p.resolve() for p in runs]


async def test_x_toggles_the_ratio_pane_to_its_factors_and_the_gate_pane_shows_movement(demo_recording: Path) -> None:
    from analyses.figures import run_curves
    from analyses.mechanism import gate_movement

    app = WsApp([demo_recording])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, RunScreen) and screen.gate_set == "ctx_gates"
        plot = screen.query_one("#ratio", TimePlot)
        assert [s.name for s in plot.payload] == ["ctx_gates", "instance_gates"]
        await pilot.press("x")  # the ratio pane does not have focus: nothing happens
        await settle(app, pilot)
        assert [s.name for s in plot.payload] == ["ctx_gates", "instance_gates"]
        screen.set_focus(screen.query_one("#ratio-pane"))
        await pilot.press("x")
        await settle(app, pilot)
        assert [s.name for s in plot.payload] == ["1−σ", "‖u‖", "|cos|", "ratio"]
        assert "(1−σ)·‖u‖·|cos|" in str(screen.query_one("#ratio-pane").border_title)
        assert screen.figure_kind() == "factors"  # ctrl+e exports what the pane shows
        with Recording.open(demo_recording) as rec:
            curves = run_curves(rec, "factors", gate_set="ctx_gates")
            movement = gate_movement(rec, rec.gate_sets["ctx_gates"])
        product = plot.payload[3].columns.last
        finite = np.isfinite(product)
        assert finite.any() and np.all(product[finite] > 0)
        np.testing.assert_allclose(product[-1], curves["ratio"][1][-1], rtol=1e-9)  # the last row, unsummarised
        await pilot.press("x")
        await settle(app, pilot)
        assert [s.name for s in plot.payload] == ["ctx_gates", "instance_gates"]
        await pilot.press("end")
        await settle(app, pilot)
        bars = screen.query_one(GateBars)
        np.testing.assert_array_equal(bars.gates["decay"], movement.parts["logit"].decay[screen.row])
        np.testing.assert_array_equal(bars.gates["rest"], movement.parts["logit"].rest[screen.row])
        assert "Δ at cursor: grad" in str(screen.query_one("#gates-pane").border_subtitle)
        assert "Δ grad" in "".join(s.text for s in bars.line_text(0, 110))
