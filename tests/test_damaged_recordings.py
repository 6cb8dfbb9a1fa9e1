"""Damaged recordings never crash or hang ws: every reader gives exit 0 or 2 and one line, truncation anywhere is
refused within 2 s, each damaged kind gets its own message, and `ws view` keeps running over all of them.

The files come from ``tests/damaged.py``: a real recording (complete, killed while running, or killed before its
first row), seeded byte flips and truncations of it, and the structural edits listed in issue 16.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from damaged import (
    flipped,
    metadata_offsets,
    random_variants,
    reader_calls,
    run_readers,
    structural_edits,
    truncated,
    write_recording,
)

from recorders.format import Recording
from recorders.format.errors import RecordingError
from workstation.cli import main

N_VARIANTS = 10  # per source file: 40 reader calls, ~10 s on a loaded 2-core machine
REFUSE_SECONDS = 2.0  # a hang (HDF5's SWMR retries) lasts minutes; a refusal takes milliseconds
FATAL = {"config-not-json", "config-json-list", "step-missing"}  # no part of these can be trusted


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("sources")
    return {mode: write_recording(out / f"{mode}.h5", mode) for mode in ("complete", "killed", "empty")}


@pytest.fixture(scope="module")
def edits(sources: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    return structural_edits(sources["complete"], tmp_path_factory.mktemp("edits"))


def ws(*args: str) -> tuple[int, str, str]:
    """Run the ws CLI in-process: exit code, stdout, stderr (an exception escaping ws fails the test)."""
    out, err = io.StringIO(), io.StringIO()
    argv, sys.argv = sys.argv, ["ws", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------ the fuzz test
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["complete", "killed"])
def test_fuzz_every_reader_exits_0_or_2_without_traceback_or_hang(
    mode: str, sources: dict[str, Path], edits: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    files = random_variants(sources[mode], tmp_path, N_VARIANTS, seed=16 if mode == "complete" else 17)
    if mode == "complete":
        files += [path for path, _ in edits.values()]
    else:
        files.append(sources["empty"])
    calls = [call for path in files for call in reader_calls(path, tmp_path)]
    results = run_readers(calls, per_call_timeout=30.0)
    assert len(results) == len(calls), results[-1]  # the last one hung or killed the reader
    bad = [r for r in results if r["code"] not in (0, 2) or r["traceback"] or "Traceback" in r["stderr"]]
    assert not bad, [(r["args"], r["code"], r["traceback"][-500:]) for r in bad]
    for r in results:
        if r["code"] == 2:  # one line naming the file
            lines = [line for line in r["stderr"].splitlines() if line.startswith("ws: error:")]
            assert len(lines) == 1, r["stderr"]


@pytest.mark.parametrize("mode", ["complete", "killed"])
def test_truncation_anywhere_is_refused_within_2_s(mode: str, sources: dict[str, Path], tmp_path: Path) -> None:
    """Every cut inside the superblock (0–47 bytes) and seeded cuts anywhere else: RecordingError, quickly."""
    size = sources[mode].stat().st_size
    cuts = list(range(48)) + sorted(np.random.default_rng(3).integers(48, size, 24).tolist())
    for cut in cuts:
        path = truncated(sources[mode], tmp_path / f"cut-{cut}.h5", cut)
        start = time.perf_counter()
        with pytest.raises(RecordingError, match=str(path)):
            Recording.open(path).close()
        assert time.perf_counter() - start <= REFUSE_SECONDS, cut


def test_killed_recording_with_flipped_metadata_never_hangs(sources: dict[str, Path], tmp_path: Path) -> None:
    """A byte flipped just after each metadata signature of a killed (SWMR) file: opening and reading every series
    ends within 2 s with the data or a RecordingError (the issue saw such files hang for over 12 minutes)."""
    source = sources["killed"]
    for i, offset in enumerate(metadata_offsets(source)):
        path = flipped(source, tmp_path / f"flip-{i}.h5", [offset + 5])
        start = time.perf_counter()
        with contextlib.suppress(RecordingError), Recording.open(path) as rec:
            for series in rec.layout.step_series():
                with contextlib.suppress(RecordingError):
                    rec.read(series)
            rec.summary()
        assert time.perf_counter() - start <= REFUSE_SECONDS, offset


# ------------------------------------------------------------------------------------ one test per damaged kind
@pytest.mark.parametrize(
    "kind",
    [
        "config-not-json",
        "config-json-list",
        "events-kind-short",
        "events-heap",
        "empty-gate-dataset",
        "gate-series-short",
        "gate-set-group",
        "external-link",
        "layout-n-gates",
        "step-missing",
    ],
)
def test_damaged_kind_is_named(kind: str, edits: dict[str, tuple[Path, str]]) -> None:
    """A whole-file problem is one error line (exit 2); a damaged part leaves the rest readable: inspect exits 0,
    shows the intact summary and names the part, and reading the part raises RecordingError with the message."""
    path, message = edits[kind]
    code, out, err = ws("inspect", "--json", path)
    if kind in FATAL:
        assert code == 2 and message in err and str(path) in err and err.count("\n") == 1
        return
    assert code == 0, err
    summary = json.loads(out)
    assert summary["rows"] == 200 and summary["method"] == "coop-gating" and summary["damaged"]
    named = [f"{part} is damaged ({reason})" for part, reason in summary["damaged"].items()]
    assert any(message in line for line in named), named
    with Recording.open(path) as rec:
        part = next(iter(rec.damaged), "events")  # a broken heap shows only when read
        reader = rec.events if part == "events" else lambda: rec.read(part)
        with pytest.raises(RecordingError, match=f"{path}: {part} is damaged"):
            reader()
        assert rec.read("steps/loss/total").shape == (200,)  # an intact part still reads
    code, out, err = ws("inspect", path)
    assert code == 0 and "damaged" in out and "Traceback" not in out + err


def test_layout_n_gates_is_checked_against_the_data(edits: dict[str, tuple[Path, str]]) -> None:
    with Recording.open(edits["layout-n-gates"][0]) as rec:
        assert rec.gate_sets["g"].n_gates == 1000  # what the layout claims ...
        assert all(rec.is_damaged(f"gates/g/{s}") for s in rec.gate_sets["g"].series)  # ... is not what is there
        assert not rec.is_damaged("gates/ig/value")


def test_stats_skips_a_damaged_file_with_a_warning_and_strict_refuses(
    sources: dict[str, Path], edits: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    for i in range(4):  # two groups of two good runs
        shutil.copyfile(sources["complete"], tmp_path / f"good-{i}.h5")
        with h5py.File(tmp_path / f"good-{i}.h5", "r+") as f:
            f.attrs["config"] = json.dumps({"method": "coop-gating", "arm": i % 2, "seed": i})
    bad, message = edits["gate-series-short"]
    fatal, fatal_message = edits["config-not-json"]
    args = ["stats", tmp_path, bad, fatal, "--by", "arm", "--metric", "late_ratio@g"]
    code, out, err = ws(*args)
    assert code == 0, err
    warnings = [line for line in err.splitlines() if line.startswith("ws: warning: skipped")]
    assert len(warnings) == 2 and str(bad) in warnings[0] and message in warnings[0]
    assert str(fatal) in warnings[1] and fatal_message in warnings[1]
    code, out, err = ws(*args, "--strict")
    assert code == 2 and str(bad) in err and message in err and err.count("\n") == 1


def test_empty_directory_and_bad_refresh_are_one_line_errors(tmp_path: Path) -> None:
    for command in (["inspect"], ["stats", "--by", "method", "--metric", "final_hm"], ["view"]):
        code, out, err = ws(*command[:1], tmp_path, *command[1:])
        assert code == 2 and "no .h5 recordings" in err and str(tmp_path) in err, (command, err)
    (tmp_path / "a.h5").write_bytes(b"")
    for value in ("nan", "inf", "-1", "0"):
        code, out, err = ws("view", tmp_path / "a.h5", "--refresh", value)
        assert code == 2 and "--refresh" in err and err.count("\n") == 1, (value, err)


# ------------------------------------------------------------------------------------------------- the viewer
async def test_viewer_keeps_running_over_every_damaged_kind(
    sources: dict[str, Path], edits: dict[str, tuple[Path, str]], tmp_path: Path
) -> None:
    """A directory holding each damaged kind, a truncated file, a killed and an empty killed file: the recordings
    pane lists the unreadable ones as such, every readable one opens, the stepping keys run over it, and the app
    is still running (return code unset) at the end."""
    from test_viewer import SIZE, settle

    from workstation.app.app import WsApp
    from workstation.app.screens.recordings import RecordingsScreen
    from workstation.app.screens.run import RunScreen

    folder = tmp_path / "mixed"
    folder.mkdir()
    for kind, (path, _) in edits.items():
        shutil.copyfile(path, folder / f"{kind}.h5")
    for mode in ("killed", "empty"):
        shutil.copyfile(sources[mode], folder / f"{mode}.h5")
    truncated(sources["complete"], folder / "cut-21.h5", 21)
    paths = sorted(folder.glob("*.h5"))
    app = WsApp(paths, sources=[folder])
    async with app.run_test(size=SIZE) as pilot:
        await settle(app, pilot)
        screen = app.screen
        assert isinstance(screen, RecordingsScreen)
        unreadable = {p.name for p, e in screen.entries.items() if e.error}
        assert unreadable == {"config-not-json.h5", "config-json-list.h5", "step-missing.h5", "cut-21.h5"}
        for path in paths:
            if path.name in unreadable:
                assert not app.open_run(path)
                continue
            assert app.open_run(path), path
            await settle(app, pilot)
            assert isinstance(app.screen, RunScreen)
            for key in ("right", "L", "end", "H", "left", "home", "right_square_bracket", "g", "right"):
                await pilot.press(key)
            await settle(app, pilot)
            assert app.is_running and app.return_code is None, path
            status = str(app.screen.status())
            if path.stem in edits and path.stem != "config-not-json":
                assert "unreadable" in status, (path, status)
            if path.stem == "empty":
                assert "no rows yet" in status
            app.pop_screen()
            await pilot.pause()
        assert app.is_running and app.return_code is None


async def test_viewer_worker_error_is_a_notification_and_other_errors_end_with_1(sources: dict[str, Path]) -> None:
    from textual.worker import WorkerFailed

    from workstation.app.app import WsApp

    app = WsApp([sources["complete"]])
    async with app.run_test() as pilot:
        app._handle_exception(WorkerFailed(RecordingError("x.h5: events is damaged (test)")))
        await pilot.pause()
        assert app.is_running and app.return_code is None
        assert any("events is damaged" in str(n.message) for n in app._notifications)
    app = WsApp([sources["complete"]])
    with contextlib.suppress(RuntimeError):
        async with app.run_test() as pilot:
            app.call_later(lambda: (_ for _ in ()).throw(RuntimeError("unexpected")))
            await pilot.pause()
    assert app.return_code == 1


def test_swmr_read_attempts_are_set_and_the_fallback_still_opens_killed_files(
    sources: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The killed file needs SWMR: it opens through the property list with few read attempts; without that setting
    (an HDF5 library ctypes cannot reach) it still opens, and a damaged copy is still refused at once."""
    from recorders.format import reader

    assert reader._set_read_attempts() is not None  # found in the library h5py loaded
    with Recording.open(sources["killed"]) as rec:
        assert rec._file.swmr_mode and rec.n_steps == 200 and rec.status == "running"
    monkeypatch.setattr(reader, "_set_read_attempts", lambda: None)
    with Recording.open(sources["killed"]) as rec:
        assert rec._file.swmr_mode and rec.n_steps == 200
    for cut in (21, 47, sources["killed"].stat().st_size // 2):
        with pytest.raises(RecordingError, match="truncated or corrupt"):
            Recording.open(truncated(sources["killed"], tmp_path / f"cut-{cut}.h5", cut))
