"""Nothing lost, nothing overwritten, nothing injected (issue 17): safe writers, full disks, damaged chunks, live
follow across processes, and strings from recordings that never reach the terminal raw."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
from synthetic import write_run

from recorders import format as rf
from recorders.format import writer as fw
from recorders.format.errors import RecordingError
from recorders.format.writer import RecordingWriter

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
EVIL = "\x1b[2J\x1b]0;pwned\x07\x9b31m"
LAYOUT = rf.Layout(loss_terms=("total",), gate_sets=(rf.GateSetSpec("g", 4, "length"),))


def _writer(path: Path, **kwargs: object) -> RecordingWriter:
    return RecordingWriter(path, LAYOUT, config={}, method="m", seed=0, device="cpu", **kwargs)  # type: ignore[arg-type]


def _block(start: int, n: int) -> dict[str, np.ndarray]:
    steps = np.arange(start, start + n)
    return {rf.STEP: steps, rf.EPOCH: steps // 100, rf.LR: steps * 1e-3, rf.loss_path("total"): steps * 0.5}


def _ws(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workstation", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300
    )


# ---------------------------------------------------------------------------------------------- overwrite
def test_out_on_an_existing_file_is_refused_before_anything_loads(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    result = _ws("record", "--out", str(notes), "--backbone", str(tmp_path / "no-such-backbone"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and str(notes) in result.stderr and "--force" in result.stderr
    assert notes.read_text() == "my notes"
    with pytest.raises(RecordingError, match="already exists"):
        _writer(notes)
    assert notes.read_text() == "my notes" and [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_force_replaces_a_file_but_never_one_a_writer_holds(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    path.write_text("old")
    with _writer(path, overwrite=True) as w:
        with pytest.raises(RecordingError, match="in use by another process"):
            _writer(path, overwrite=True)  # the first writer holds its lock
        w.append_block(_block(0, 10))
    with rf.Recording.open(path) as rec:
        assert (rec.status, rec.n_steps) == ("complete", 10)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.h5"]  # no temporary file left


def test_a_failed_final_flush_leaves_failed_not_complete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "r.h5"
    w = _writer(path, flush_every=10**6, flush_seconds=1e9)
    w.append_block(_block(0, 100))
    w.flush()
    w.append_block(_block(100, 100))
    w.add_eval(200, 1, 0.5, 0.5)

    def broken(self: RecordingWriter) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(RecordingWriter, "_write_buffers", broken)
    with pytest.raises(RecordingError, match="disk full"):
        w.close("complete")
    with rf.Recording.open(path) as rec:
        assert rec.status == "failed" and "disk full" in rec.attrs["error"]
        assert rec.n_steps == 100 and not rec.complete
    from workstation.sweep.manifest import recording_state

    assert recording_state(path)[0] == "failed"


def test_a_complete_file_with_missing_rows_is_not_complete(tmp_path: Path) -> None:
    path = tmp_path / "r.h5"
    with _writer(path, total_steps=50) as w:
        w.append_block(_block(0, 20))
    with rf.Recording.open(path) as rec:
        assert rec.status == "complete" and not rec.complete and "20 rows of 50" in rec.inconsistency()
    from workstation.sweep.manifest import recording_state

    assert recording_state(path) == ("inconsistent", None)


# ---------------------------------------------------------------------------------------------- full disk
@contextlib.contextmanager
def _tmpfs(directory: Path, size: str, extra: str = "") -> Iterator[Path]:
    directory.mkdir()
    options = f"size={size}{extra}"
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(directory)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.decode().strip() or 'not root'})")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


@pytest.mark.slow
def test_out_on_a_read_only_filesystem_or_a_held_file_fails_before_loading(tmp_path: Path) -> None:
    no_backbone = str(tmp_path / "no-such-backbone")  # loading it would fail with another message
    with _tmpfs(tmp_path / "ro", "1m", ",ro") as disk:
        result = _ws("record", "--out", str(disk / "r.h5"), "--backbone", no_backbone)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "cannot write in" in result.stderr and "Read-only file system" in result.stderr
    held = tmp_path / "held.h5"
    with _writer(held):
        result = _ws("record", "--out", str(held), "--force", "--backbone", no_backbone)
        assert result.returncode == 2 and "in use by another process" in result.stderr, result.stderr


@pytest.mark.slow
def test_disk_full_at_creation_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small", "128k") as disk:
        result = _ws("record", "--demo", "--out", str(disk / "r.h5"))
        assert result.returncode == 2, result.stderr
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
        assert str(disk / "r.h5") in result.stderr and "free" in result.stderr and "needs about" in result.stderr
        assert list(disk.iterdir()) == []


@pytest.mark.slow
def test_disk_full_mid_run_is_one_line_and_every_flushed_row_reads(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "small", "3m") as disk:
        out = disk / "r.h5"
        proc = subprocess.Popen(
            [sys.executable, "-m", "workstation", "record", "--demo", "--out", str(out)],
            env=ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + 120
        rows = 0
        while time.monotonic() < deadline and proc.poll() is None and rows < 64:  # wait for a flushed block
            with contextlib.suppress(RecordingError, OSError):
                with rf.Recording.open(out) as rec:
                    rows = rec.n_steps
            time.sleep(0.05)
        assert rows >= 64, "the demo never flushed a block"
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(b"\0" * (free - 100 * 1024))  # another program fills the disk
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 2, stderr
        assert stderr.count("\n") == 1 and "Traceback" not in stderr and "disk full" in stderr and str(out) in stderr
        assert re.search(r"about [\d.]+ [KMG]iB more needed", stderr)
        with rf.Recording.open(out) as rec:
            assert rec.status in ("failed", "running") and rec.n_steps >= rows
            steps = rec.steps()
            np.testing.assert_array_equal(steps, np.arange(rec.n_steps))
            assert np.isfinite(rec.read(rf.loss_path("total"))).all()


def test_events_of_files_written_before_the_fixed_size_encoding_still_read(tmp_path: Path) -> None:
    """A version-1 file of the first encoding: ``events/kind`` and ``events/message`` as variable-length strings,
    and a variable-length ``status`` attribute; rebuilt here from a new file with h5py."""
    path = tmp_path / "old.h5"
    with _writer(path) as w:
        w.append_block(_block(0, 20))
    with h5py.File(path, "r+") as f:
        for name in ("events/text", "events/span", "events/step", "state"):
            del f[name]
        f.create_dataset("events/step", data=np.array([5, 19]), maxshape=(None,), chunks=(256,))
        for name, values in (("kind", ["note", "epoch_end"]), ("message", ["hello é", "epoch 1"])):
            f.create_dataset(f"events/{name}", data=values, dtype=h5py.string_dtype(), maxshape=(None,), chunks=(256,))
        f.attrs["status"] = "complete"
    with rf.Recording.open(path) as rec:
        assert rec.events() == [rf.Event(5, "note", "hello é"), rf.Event(19, "epoch_end", "epoch 1")]
        assert rec.status == "complete" and rec.n_steps == 20


def test_live_events_are_read_whole_or_not_yet(tmp_path: Path) -> None:
    """A reader that sees more spans than text (the writer is between its two appends) leaves those events out."""
    path = tmp_path / "r.h5"
    w = _writer(path, flush_every=10**6, flush_seconds=1e9)
    w.add_event(1, "note", "first")
    w.flush()
    with rf.Recording.open(path) as rec:
        assert [e.message for e in rec.events()] == ["first"]
        text, spans = fw.encode_events([(2, "note", "second")], start=w._file["events/text"].shape[0])
        fw._append(w._file["events/span"], spans)  # spans and step first, text not yet
        fw._append(w._file["events/step"], np.array([2]))
        w._file.flush()
        assert [e.message for e in rec.events()] == ["first"]
        fw._append(w._file["events/text"], text)
        w._file.flush()
        assert [e.message for e in rec.events()] == ["first", "second"]
    w.close()


# ---------------------------------------------------------------------------------------------- integrity
def test_a_flipped_data_byte_is_an_error_not_a_number(tmp_path: Path) -> None:
    path = write_run(tmp_path / "r.h5", n_steps=300)
    series = rf.loss_path("total")
    with h5py.File(path, "r") as f:
        info = f[series].id.get_chunk_info(0)
        original = f[series][:]
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 40)
        byte = fh.read(1)
        fh.seek(info.byte_offset + 40)
        fh.write(bytes([byte[0] ^ 0x10]))
    with rf.Recording.open(path) as rec:
        with pytest.raises(RecordingError, match="checksum mismatch"):
            rec.read(series)
        np.testing.assert_array_equal(rec.read(rf.STEP), np.arange(300))  # other series are untouched
    result = _ws("inspect", str(path))  # damaged in part: the intact parts are shown, the damaged one is named
    out = " ".join(result.stdout.split())
    assert result.returncode == 0 and "Traceback" not in result.stdout + result.stderr
    assert f"{series} is damaged (checksum mismatch)" in out
    assert len(original) == 300


# ---------------------------------------------------------------------------------------------- injection
def _evil_recording(path: Path, seed: int, method: str, hm: float, status: str = "complete") -> Path:
    layout = rf.Layout(
        loss_terms=("total",), gate_sets=(rf.GateSetSpec("g", 2, "length", labels=(f"a{EVIL}", f"b{EVIL}")),)
    )
    w = RecordingWriter(
        path,
        layout,
        config={"variant": f"v{EVIL}", "tags": {"t": EVIL}, "note": EVIL},
        method=method,
        seed=seed,
        device=f"cpu{EVIL}",
        dataset=f"world{EVIL}",
    )
    block = _block(0, 50)
    for series in layout.gate_sets[0].series:
        block[rf.gate_path("g", series)] = np.full((50, 2), 0.5)
    w.append_block(block)
    w.add_eval(50, 1, hm, hm)
    w.add_event(10, f"note{EVIL}", f"message{EVIL}")
    w.add_event(50, "epoch_end", f"epoch 1 {EVIL}")
    w.close(status, f"boom{EVIL}" if status == "failed" else "")
    return path


@pytest.mark.slow
def test_escape_sequences_in_a_recording_never_reach_the_terminal(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    for i, (method, hm) in enumerate([("x", 0.5), ("x", 0.6), ("y", 0.7), ("y", 0.8)]):
        _evil_recording(runs / f"r{i}.h5", seed=i, method=f"{method}{EVIL}", hm=hm)
    failed = _evil_recording(tmp_path / "failed.h5", seed=9, method=f"m{EVIL}", hm=0.1, status="failed")
    outputs = {
        "inspect": _ws("inspect", str(failed)),
        "stats": _ws("stats", str(runs), "--by", "method", "--metric", "final_hm"),
        "stats-variant": _ws("stats", str(runs), "--by", "variant", "--metric", "final_hm"),
    }
    for name, result in outputs.items():
        text = result.stdout + result.stderr
        assert "pwned" not in text and not CONTROL.search(text), f"{name}: {text!r}"
    assert outputs["inspect"].returncode == 0 and "boom" in outputs["inspect"].stdout
    assert outputs["stats"].returncode == 0 and "x" in outputs["stats"].stdout
    raw = json.loads(_ws("inspect", "--json", str(failed)).stdout)
    assert raw["error"] == f"boom{EVIL}" and raw["method"] == f"m{EVIL}"  # --json keeps the raw values


async def test_escape_sequences_never_reach_the_viewer(tmp_path: Path) -> None:
    from workstation.app.app import WsApp
    from workstation.app.screens.run import RunScreen

    path = _evil_recording(tmp_path / "evil.h5", seed=1, method=f"m{EVIL}", hm=0.5, status="failed")
    app = WsApp([path])
    async with app.run_test(size=(120, 40)) as pilot:
        for _ in range(20):
            await pilot.pause(0.05)
        screen = app.screen
        assert isinstance(screen, RunScreen)
        shown = [screen.status(), screen.run.title, *(m.label for m in screen.markers)]
        shown += list(screen.run.gate_labels("g"))
        svg = app.export_screenshot()
    assert not any(CONTROL.search(s) for s in shown), shown
    assert not CONTROL.search(svg) and "pwned" not in svg


# ---------------------------------------------------------------------------------------------- live follow
LIVE_WRITER = """
import sys, time
import numpy as np
from recorders import format as rf

path, epochs = sys.argv[1], int(sys.argv[2])
layout = rf.Layout(loss_terms=("total",), gate_sets=(rf.GateSetSpec("g", 4, "length", labels=("a", "b", "c", "d")),))
w = rf.RecordingWriter(path, layout, config={}, method="live", seed=0, device="cpu", flush_every=10**9,
                       flush_seconds=1e9, total_steps=epochs * 40)
print("created", flush=True)
for epoch in range(epochs):
    for part in range(4):  # several blocks per epoch, events with long messages between them
        steps = np.arange(epoch * 40 + part * 10, epoch * 40 + part * 10 + 10)
        block = {rf.STEP: steps, rf.EPOCH: np.full(10, epoch), rf.LR: steps * 1e-3, rf.loss_path("total"): steps * 0.1}
        for series in layout.gate_sets[0].series:
            block[rf.gate_path("g", series)] = np.tile(np.linspace(0.2, 0.8, 4), (10, 1))
        w.append_block(block)
        w.add_event(int(steps[-1]), "note", "n" * (50 * part + 1))
        w.flush()
        time.sleep(0.05)
    w.add_eval((epoch + 1) * 40, epoch + 1, 0.5, 0.5)
    w.add_event((epoch + 1) * 40, "epoch_end", f"epoch {epoch + 1}: " + "x" * 300)
    w.flush()
    time.sleep(0.3)
w.close()
print("closed", flush=True)
"""


async def test_the_viewer_follows_another_process_to_complete(tmp_path: Path) -> None:
    from workstation.app.app import WsApp
    from workstation.app.widgets.timeline import Timeline

    script = tmp_path / "writer.py"
    script.write_text(LIVE_WRITER)
    path = tmp_path / "live.h5"
    epochs = 4
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(epochs)], env=ENV, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "created"
    app = WsApp([path], live_interval=0.05)
    seen_epoch_ends: set[int] = set()
    try:
        async with app.run_test(size=(120, 40)) as pilot:
            deadline = time.monotonic() + 120
            status = ""
            while time.monotonic() < deadline:
                await pilot.pause(0.05)
                screen = app.screen
                markers = getattr(screen, "markers", [])
                seen_epoch_ends |= {m.step for m in markers if m.kind == "epoch_end"}
                status = app.screen.query_one(Timeline).status
                if "complete" in status and len(seen_epoch_ends) == epochs:
                    break
            assert proc.wait(timeout=60) == 0
            assert "complete" in status, status
            assert seen_epoch_ends == {40 * (e + 1) for e in range(epochs)}
            assert app.screen.run.n_rows == 40 * epochs
    finally:
        proc.kill()


# ---------------------------------------------------------------------------------------------- viewer child
def test_diagnostics_child_ignores_modules_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workstation.app.data import diagnose_in_subprocess

    path = write_run(tmp_path / "r.h5", n_steps=400, n_gates=3, onset_step=100)
    trap = tmp_path / "cwd"
    (trap / "analyses").mkdir(parents=True)
    (trap / "analyses" / "__init__.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    (trap / "h5py.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').close()\n")
    monkeypatch.chdir(trap)
    got = diagnose_in_subprocess(path)
    assert not (tmp_path / "ran").exists()
    import analyses.diagnostics

    with rf.Recording.open(path) as rec:
        want = analyses.diagnostics.diagnose(rec)
    gate = next(iter(want.gate_sets))
    np.testing.assert_array_equal(got.gate_sets[gate].ratio, want.gate_sets[gate].ratio)
    assert got.gate_sets[gate].verdict == want.gate_sets[gate].verdict and got.path == want.path
    with pytest.raises(RecordingError, match="not an HDF5 file"):
        (tmp_path / "bad.h5").write_text("x")
        diagnose_in_subprocess(tmp_path / "bad.h5")
