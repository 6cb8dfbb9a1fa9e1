"""`ws inspect` on good and bad files, and the light commands stay free of torch and transformers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from typer.testing import CliRunner

from workstation.cli import app, main

ROOT = Path(__file__).resolve().parents[1]


def _missing(tmp_path: Path, demo: Path) -> Path:
    return tmp_path / "nope.h5"


def _not_hdf5(tmp_path: Path, demo: Path) -> Path:
    path = tmp_path / "notes.h5"
    path.write_text("step,loss\n0,1.0\n")
    return path


def _foreign_hdf5(tmp_path: Path, demo: Path) -> Path:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["data"] = [1, 2, 3]
    return path


def _newer_schema(tmp_path: Path, demo: Path) -> Path:
    path = tmp_path / "future.h5"
    shutil.copy(demo, path)
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = 99
    return path


def _truncated(tmp_path: Path, demo: Path) -> Path:
    path = tmp_path / "cut.h5"
    shutil.copy(demo, path)
    os.truncate(path, path.stat().st_size // 2)
    return path


def _zeroed_superblock(tmp_path: Path, demo: Path) -> Path:
    """An HDF5 signature followed by zeros: HDF5 raises RuntimeError, not OSError, for this one."""
    path = tmp_path / "zeros.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(2048))
    return path


BAD = {
    "missing path": (_missing, "no such file"),
    "damaged superblock": (_zeroed_superblock, "corrupt"),
    "not HDF5": (_not_hdf5, "not an HDF5 file"),
    "not a ws recording": (_foreign_hdf5, "not a ws recording"),
    "newer schema": (_newer_schema, "newer than this ws"),
    "truncated": (_truncated, "truncated or corrupt"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_exit_2(
    case: str, tmp_path: Path, demo_recording: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    make, problem = BAD[case]
    path = make(tmp_path, demo_recording)
    monkeypatch.setattr(sys, "argv", ["ws", "inspect", str(path)])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and str(path) in err and problem in err, err
    assert "Traceback" not in out + err


def test_bad_input_in_a_real_process(tmp_path: Path, demo_recording: Path) -> None:
    path = _truncated(tmp_path, demo_recording)
    result = subprocess.run(
        [sys.executable, "-m", "workstation", "inspect", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("ws: error: ") and result.stderr.count("\n") == 1 and str(path) in result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def _imported_after(*args: str) -> tuple[int, set[str]]:
    """Run ``ws ARGS`` in a fresh interpreter; its exit code and which heavy modules it imported."""
    code = (
        "import sys\nfrom workstation.cli import main\nsys.argv = ['ws', *sys.argv[1:]]\ntry:\n    main()\n"
        "except SystemExit as e:\n    code = e.code or 0\nelse:\n    code = 0\n"
        "print('HEAVY', code, *[m for m in ('torch', 'transformers') if m in sys.modules], file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    last = result.stderr.strip().splitlines()[-1].split()
    assert last[0] == "HEAVY", result.stderr
    return int(last[1]), set(last[2:])


@pytest.mark.parametrize("args", [("--help",), ("inspect", "DEMO"), ("inspect", "DEMO", "--json")])
def test_light_commands_do_not_import_torch(args: tuple[str, ...], demo_recording: Path) -> None:
    code, heavy = _imported_after(*(str(demo_recording) if a == "DEMO" else a for a in args))
    assert code == 0 and heavy == set()


def test_the_import_check_can_see_torch() -> None:
    """The check above would notice: the demo module does import torch."""
    result = subprocess.run(
        [sys.executable, "-c", "import sys, recorders.train.demo; print('torch' in sys.modules)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.strip() == "True"


def _run(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_inspect_shows_what_the_recording_holds(demo_recording: Path) -> None:
    out = _run("inspect", str(demo_recording))
    for fact in (
        "ws-recording v1",
        "complete",
        "demo / random / 0",
        "40",
        "ctx_gates",
        "instance_gates",
        "prompt [prompt",
        "last eval",
        "step 39",
        "demo.lr=0.05",
        "steps=40",
    ):
        assert fact in out, fact


def test_inspect_json_and_directories(tmp_path: Path, demo_recording: Path) -> None:
    summary = json.loads(_run("inspect", str(demo_recording), "--json"))
    assert (summary["status"], summary["rows"], summary["step_range"]) == ("complete", 40, [0, 39])
    assert summary["gate_sets"]["ctx_gates"] == {"kind": "length", "n_gates": 4}
    assert summary["groups"]["gates"]["role"] == "gate" and summary["config"]["steps"] == 40
    assert summary["last_eval"]["step"] == 39 and 0 <= summary["last_eval"]["hm"] <= 1
    for name in ("a.h5", "b.h5"):
        shutil.copy(demo_recording, tmp_path / name)
    both = json.loads(_run("inspect", str(tmp_path), "--json"))
    assert [Path(s["path"]).name for s in both] == ["a.h5", "b.h5"]


def test_rich_progress_draws_each_task_until_it_completes():
    """The CLI's renderer: a bar per task name, removed when completed reaches total; other tasks keep theirs."""
    import io

    from rich.console import Console

    from workstation.progress import RichProgress

    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with RichProgress(console) as progress:
        progress("features", 4, 8)
        progress("train", 1, 3, loss=2.5)
        assert [t.description for t in progress._bar.tasks] == ["image features", "train"]
        progress("features", 8, 8)  # done: removed, and "train" (a later task id) still updates
        progress("train", 2, 3, loss=1.25)
        assert [(t.description, t.completed) for t in progress._bar.tasks] == [("train", 2)]
        progress("train", 3, 3)
        assert progress._bar.tasks == []
