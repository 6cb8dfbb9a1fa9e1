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
