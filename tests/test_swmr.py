"""Crash safety and live reading: another process appends, a reader follows; a writer killed with SIGKILL at
random moments leaves a file that opens with every row up to its last flush."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from recorders import format as rf
from recorders.format.errors import RecordingError

WRITER = """
import sys
import numpy as np
import pytest
from recorders import format as rf
from recorders.format.errors import RecordingError

path, block, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
layout = rf.Layout(loss_terms=("total",), gate_sets=(rf.GateSetSpec("g", 8, "length"),),
                   prompts=(rf.PromptSpec("p", 4),))
w = rf.RecordingWriter(path, layout, config={"mode": mode}, method="swmr", seed=0, device="cpu",
                       flush_every=10**9, flush_seconds=1e9)
print("created", flush=True)
for b in range(int(sys.argv[4])):
    if mode == "wait":  # one block per line on stdin
        sys.stdin.readline()
    steps = np.arange(b * block, (b + 1) * block)
    block_rows = {rf.STEP: steps, rf.EPOCH: steps // 1000, rf.LR: steps * 1e-3, rf.loss_path("total"): steps * 0.5}
    for series in layout.gate_sets[0].series:
        block_rows[rf.gate_path("g", series)] = steps[:, None] + np.arange(8)
    for series in rf.PROMPT_SERIES:
        block_rows[rf.prompt_path("p", series)] = -steps[:, None] - np.arange(4)
    w.append_block(block_rows)
    w.flush()
    print(f"flushed {(b + 1) * block}", flush=True)
w.close()
"""


def _start(tmp_path: Path, block: int, mode: str, blocks: int) -> tuple[subprocess.Popen[str], Path]:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    path = tmp_path / "live.h5"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(block), mode, str(blocks)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "created"
    return proc, path


def _check_rows(rec: rf.Recording) -> None:
    """Every committed row holds exactly what the writer wrote for its step."""
    steps = rec.steps()
    np.testing.assert_array_equal(steps, np.arange(rec.n_steps))
    np.testing.assert_array_equal(rec.read(rf.loss_path("total")), steps * 0.5)
    np.testing.assert_array_equal(rec.read(rf.gate_path("g", "grad")), steps[:, None] + np.arange(8))
    np.testing.assert_array_equal(rec.read(rf.prompt_path("p", "norm")), -steps[:, None] - np.arange(4))


def test_reader_follows_a_file_another_process_appends(tmp_path: Path) -> None:
    proc, path = _start(tmp_path, block=50, mode="wait", blocks=3)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        with rf.Recording.open(path) as rec:
            assert (rec.n_steps, rec.status) == (0, "running")
            for expected in (50, 100, 150):
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == f"flushed {expected}"
                assert rec.n_steps == expected - 50  # nothing changes until refresh
                assert rec.refresh() == expected
                _check_rows(rec)
            assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    with rf.Recording.open(path) as rec:
        assert (rec.status, rec.n_steps) == ("complete", 150)


def test_sigkill_at_random_moments_keeps_every_flushed_row(tmp_path: Path) -> None:
    rng = np.random.default_rng(20261129)
    for trial in range(10):
        trial_dir = tmp_path / f"t{trial}"
        trial_dir.mkdir()
        proc, path = _start(trial_dir, block=int(rng.integers(50, 400)), mode="run", blocks=10**6)
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        assert proc.stdout is not None
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL
        flushed = [int(line.split()[1]) for line in out.splitlines() if line.startswith("flushed")]
        least = flushed[-1] if flushed else 0
        with rf.Recording.open(path) as rec:
            assert rec.status == "running"
            assert rec.n_steps >= least, f"trial {trial}: {rec.n_steps} rows, {least} were flushed"
            _check_rows(rec)
        cut = trial_dir / "cut.h5"  # a killed file that is then truncated is refused, not followed forever
        shutil.copy(path, cut)
        os.truncate(cut, cut.stat().st_size // 2)
        with pytest.raises(RecordingError, match="truncated"):
            rf.Recording.open(cut)


def test_a_file_killed_before_its_first_row_opens_empty(tmp_path: Path) -> None:
    proc, path = _start(tmp_path, block=10, mode="wait", blocks=1)
    proc.kill()
    proc.communicate(timeout=60)
    with rf.Recording.open(path) as rec:
        assert rec.n_steps == 0 and rec.summary()["step_range"] is None


def _recording_of(tmp_path: Path, rows: int, finish: bool) -> Path:
    """A recording with ``rows`` flushed rows whose writer either closed it (``complete``) or was killed."""
    proc, path = _start(tmp_path, block=rows, mode="wait", blocks=1 if finish else 2)  # 2: waits, then is killed
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == f"flushed {rows}"
    if finish:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
    else:
        proc.kill()
        proc.communicate(timeout=60)
    return path


def _tear_last_chunk(path: Path, series: str, keep_rows: int, flip_row: int | None = None) -> None:
    """Leave ``series``' last chunk as a writer killed mid-rewrite does: the bytes after row ``keep_rows`` are
    new (here: garbage) and the checksum is the old one; ``flip_row`` also changes one byte of an old row."""
    import h5py

    with h5py.File(path, "r", swmr=True) as f:
        ds = f[series]
        info = ds.id.get_chunk_info(ds.id.get_num_chunks() - 1)
        row_bytes = ds.dtype.itemsize * int(np.prod(ds.shape[1:], dtype=np.int64))
        chunk_bytes = ds.chunks[0] * row_bytes
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + keep_rows * row_bytes)
        fh.write(b"\x5a" * (chunk_bytes - keep_rows * row_bytes))
        if flip_row is not None:
            fh.seek(info.byte_offset + flip_row * row_bytes)
            old = fh.read(1)
            fh.seek(info.byte_offset + flip_row * row_bytes)
            fh.write(bytes([old[0] ^ 0xFF]))


def test_a_last_chunk_torn_by_a_killed_flush_reads_its_flushed_rows(tmp_path: Path) -> None:
    """A SIGKILL can cut a flush's in-place rewrite of the last chunk at a page boundary (seen under load): its
    flushed rows are still what the previous flush wrote, and its stale checksum proves it."""
    path = _recording_of(tmp_path, 300, finish=False)
    for series in (rf.loss_path("total"), rf.gate_path("g", "grad"), rf.STEP):
        _tear_last_chunk(path, series, keep_rows=300)
    with rf.Recording.open(path) as rec:
        assert (rec.status, rec.n_steps) == ("running", 300)
        _check_rows(rec)
        assert set(rec.unchecked) == {rf.loss_path("total"), rf.gate_path("g", "grad"), rf.STEP}
        assert not rec.damaged
        np.testing.assert_array_equal(rec.read(rf.STEP, 10, 290, 7), np.arange(10, 290, 7))
        assert float(rec.row(rf.loss_path("total"), -1)) == 299 * 0.5


def test_a_torn_last_chunk_whose_old_rows_changed_is_damaged(tmp_path: Path) -> None:
    path = _recording_of(tmp_path, 300, finish=False)
    _tear_last_chunk(path, rf.loss_path("total"), keep_rows=300, flip_row=123)
    with rf.Recording.open(path) as rec:
        np.testing.assert_array_equal(rec.steps(), np.arange(300))
        with pytest.raises(RecordingError, match="steps/loss/total is damaged"):
            rec.read(rf.loss_path("total"))
        assert rec.is_damaged(rf.loss_path("total")) and not rec.unchecked


def test_a_bad_last_chunk_in_a_complete_file_is_damaged(tmp_path: Path) -> None:
    path = _recording_of(tmp_path, 300, finish=True)
    _tear_last_chunk(path, rf.loss_path("total"), keep_rows=300)
    with rf.Recording.open(path) as rec:
        assert rec.status == "complete"
        with pytest.raises(RecordingError, match="steps/loss/total is damaged"):
            rec.read(rf.loss_path("total"))


def test_fletcher32_prefix_matches_hdf5(tmp_path: Path) -> None:
    """The reader's Fletcher-32 agrees with HDF5's on chunks HDF5 wrote: odd and even row sizes, partly filled."""
    import h5py

    from recorders.format.reader import _fletcher32_prefix_rows

    rng = np.random.default_rng(7)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        for name, dtype, width, rows in (
            ("a", "f8", 3, 37),
            ("b", "bool", 5, 11),
            ("c", "u1", 1, 1),
            ("d", "i8", 2, 64),
        ):
            ds = f.create_dataset(
                name, shape=(rows, width), maxshape=(None, width), dtype=dtype, chunks=(64, width), fletcher32=True
            )
            ds[:] = rng.integers(1, 200, (rows, width)).astype(dtype)
    with h5py.File(tmp_path / "f.h5", "r") as f:
        for name, rows in (("a", 37), ("b", 11), ("c", 1), ("d", 64)):
            ds = f[name]
            _, raw = ds.id.read_direct_chunk((0, 0))
            assert _fletcher32_prefix_rows(raw, ds.dtype.itemsize * ds.shape[1]) == 64  # zeros after row `rows`
            body = bytearray(raw)
            body[(rows - 1) * ds.dtype.itemsize * ds.shape[1]] ^= 0x01  # a changed last row: no prefix matches
            assert _fletcher32_prefix_rows(bytes(body), ds.dtype.itemsize * ds.shape[1]) is None
