"""`ws batch`: spec validation, run ids, real sweeps on the world (local and Ray), failure, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from recorders.format import Recording
from recorders.format.errors import ConfigError, WsError
from workstation.sweep.spec import load_spec, parse_spec

# Short runs: a random-init tiny CLIP with the world's tokenizer, 1 shot per class, one epoch.
FAST = {"dataset": "world", "shots": 1, "epochs": 1, "warmup_epochs": 0, "views": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def backbone_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from recorders.clip.pretrain import random_checkpoint

    return random_checkpoint(tmp_path_factory.mktemp("batch-clip"))


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every child of this module shares one feature cache (the test images are encoded once), kept out of the
    user's home."""
    return {**os.environ, "WS_CACHE": str(tmp_path_factory.mktemp("cache")), "PYTHONUNBUFFERED": "1"}


def _spec(path: Path, body: str, backbone: Path | None = None, out: Path | None = None) -> Path:
    base = dict(FAST, backbone=str(backbone or "builtin"))
    lines = [f'out = "{out or path.parent / "sweeps"}"', "[base]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in base.items()]
    path.write_text("\n".join(lines) + "\n" + body, encoding="utf-8")
    return path


def _ws(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workstation", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# ---------------------------------------------------------------------------------------------- the spec
def test_axes_cross_and_named_axes_become_tags(tmp_path: Path) -> None:
    spec = load_spec(
        _spec(
            tmp_path / "s.toml",
            """
[axes]
method = ["coop-gating", "cocoop-gating"]
seed = [1, 2]
[axes.intervention]
none = {}
lr50 = { gate_lr_scale = 50.0 }
[[runs]]
method = "coop"
seed = 7
""",
        )
    )
    assert len(spec.runs) == 2 * 2 * 2 + 1
    assert len({r.run_id for r in spec.runs}) == len(spec.runs)
    lr50 = [r for r in spec.runs if r.labels.get("intervention") == "lr50"]
    assert len(lr50) == 4 and all(r.config.gate_lr_scale == 50.0 for r in lr50)
    assert all(r.config.tags == {"intervention": "lr50"} for r in lr50)
    assert spec.runs[-1].config.method == "coop" and spec.runs[-1].config.seed == 7
    assert spec.directory == tmp_path / "sweeps" / "s"


def test_exclude_drops_matching_combinations_and_checks_its_labels(tmp_path: Path) -> None:
    body = """
[axes]
method = ["coop", "coop-gating"]
seed = [1, 2]
[axes.intervention]
none = {}
lr50 = { gate_lr_scale = 50.0 }
[[exclude]]
method = "coop"
intervention = "lr50"
"""
    spec = load_spec(_spec(tmp_path / "s.toml", body))
    combos = sorted((r.method, r.labels["intervention"]) for r in spec.runs)
    assert combos == sorted([("coop", "none")] * 2 + [("coop-gating", "none")] * 2 + [("coop-gating", "lr50")] * 2)
    with pytest.raises(ConfigError, match="not a label of that axis"):
        load_spec(_spec(tmp_path / "t.toml", body.replace('intervention = "lr50"', 'intervention = "lr5"')))
    with pytest.raises(ConfigError, match="not an axis"):
        load_spec(_spec(tmp_path / "u.toml", body.replace('intervention = "lr50"', 'variant = "x"')))


EXAMPLES = Path(__file__).parent.parent / "examples" / "sweeps"


@pytest.mark.parametrize(
    ("name", "runs"), [("paper-methods", 35), ("paper-interventions", 60), ("paper-variants", 15), ("settle", 80)]
)
def test_paper_studies_load_and_switch_to_real_data_by_one_line(tmp_path: Path, name: str, runs: int) -> None:
    text = (EXAMPLES / f"{name}.toml").read_text(encoding="utf-8")
    assert len(load_spec(EXAMPLES / f"{name}.toml").runs) == runs
    eurosat = next(line for line in text.splitlines() if line.startswith("# eurosat = ")).removeprefix("# ")
    switched = text.replace('world = { dataset = "world" }', eurosat)  # the data axis: one line for another
    switched = switched.replace('world-mixed = { dataset = "world-mixed" }\n', "")  # settle: and no positive control
    spec = (tmp_path / f"{name}.toml").write_text(switched, encoding="utf-8")
    assert spec and {r.config.dataset for r in load_spec(tmp_path / f"{name}.toml").runs} == {"eurosat"}


def test_run_ids_follow_the_config_so_editing_adds_runs(tmp_path: Path) -> None:
    first = load_spec(_spec(tmp_path / "s.toml", "[axes]\nseed = [1, 2]\n"))
    again = load_spec(_spec(tmp_path / "s.toml", "[axes]\nseed = [1, 2]\n"))
    edited = load_spec(_spec(tmp_path / "s.toml", "[axes]\nseed = [1, 2, 3]\n"))
    ids = [r.run_id for r in first.runs]
    assert ids == [r.run_id for r in again.runs]
    assert [r.run_id for r in edited.runs][:2] == ids and len(edited.runs) == 3
    other = load_spec(_spec(tmp_path / "s.toml", "[axes]\nseed = [1, 2]\nlr = [0.01]\n"))
    assert not set(ids) & {r.run_id for r in other.runs}  # a changed key is a different run


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[axes]\nseed = []\n", "axis 'seed' is empty"),
        ("[axes]\nmethod = ['coop', 'copo']\n", "unknown method 'copo'"),
        ("[axes]\nlearning_rate = [0.1]\n", "not a config key"),
        ("[base]\n", "not valid TOML"),
        ("colour = 1\n", "unknown spec key 'colour'"),
        ("[[runs]]\nshotz = 3\n", "unknown config key 'shotz'"),
        ("[resources]\ngpus = -1\n", "resources.gpus"),
        ("[[runs]]\nseed = 3\ntags = 'abc'\n", "tags = 'abc' must be a table"),
        ("[axes.x]\na = { tags = 'abc' }\n", "tags = 'abc' must be a table"),
    ],
)
def test_invalid_specs_are_one_line_errors(tmp_path: Path, body: str, message: str) -> None:
    raw_path = tmp_path / "bad.toml"
    if body.startswith("colour"):
        raw_path.write_text(body, encoding="utf-8")
    else:
        _spec(raw_path, body)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_spec(raw_path)


@pytest.mark.parametrize(
    ("top", "message"),
    [
        ("out = 5", "out = 5 must be a folder path"),
        ('name = "../escape"', "must be a plain folder name"),
        ('name = "/tmp/abs"', "must be a plain folder name"),
        ('name = ".."', "must be a plain folder name"),
    ],
)
def test_spec_names_and_out_are_confined(tmp_path: Path, top: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_spec({**tomllib.loads(top), "axes": {"seed": [1]}}, tmp_path / "s.toml")


def test_manifest_entries_are_checked_and_the_manifest_is_readable_by_others(tmp_path: Path) -> None:
    from workstation.sweep.manifest import MANIFEST, Manifest, RunEntry

    manifest = Manifest(tmp_path, runs={"a": RunEntry("a", {}, final_hm=0.5)})
    manifest.save()
    assert (tmp_path / MANIFEST).stat().st_mode & 0o777 == 0o644
    raw = json.loads((tmp_path / MANIFEST).read_text())
    raw["runs"][0]["final_hm"] = "abc"
    (tmp_path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match="final_hm = 'abc' must be a number"):
        Manifest.load(tmp_path)


def test_a_second_driver_is_refused_naming_the_first(tmp_path: Path) -> None:
    from workstation.sweep.lock import SweepLock

    with SweepLock(tmp_path):
        with pytest.raises(WsError, match=rf"being run by another ws batch \(pid {os.getpid()} on "):
            with SweepLock(tmp_path):
                pass
    with SweepLock(tmp_path):  # released with its holder
        pass


def test_invalid_spec_on_the_command_line_exits_2_listing_valid_names(tmp_path: Path) -> None:
    path = _spec(tmp_path / "bad.toml", "[axes]\nmethod = ['coop', 'copo']\n")
    result = _ws("batch", str(path), "--dry-run", env=dict(os.environ))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "coop-gating" in result.stderr and "copo" in result.stderr


def test_unknown_key_lists_near_matches() -> None:
    with pytest.raises(ConfigError, match="did you mean shots"):
        parse_spec({"base": {"shot": 2}}, Path("spec.toml"))


# ---------------------------------------------------------------------------------------------- real runs
def test_local_two_jobs_runs_complete_and_a_failing_run_is_marked_failed(
    tmp_path: Path, backbone_dir: Path, env: dict[str, str]
) -> None:
    path = _spec(
        tmp_path / "s.toml",
        """
[axes]
method = ["coop", "coop-gating"]
[[runs]]
method = "coop"
dataset = "eurosat"
data_root = "/nonexistent/ws-data"
""",
        backbone_dir,
    )
    result = _ws("batch", str(path), "--jobs", "2", env=env)
    assert result.returncode == 1, result.stderr  # one run failed; the others finished
    sweep = tmp_path / "sweeps" / "s"
    manifest = json.loads((sweep / "manifest.json").read_text())
    by_status: dict[str, list[dict]] = {}
    for entry in manifest["runs"]:
        by_status.setdefault(entry["status"], []).append(entry)
    assert len(by_status["complete"]) == 2 and len(by_status["failed"]) == 1
    failed = by_status["failed"][0]
    assert "/nonexistent/ws-data" in failed["error"] and failed["attempts"] == 1
    for entry in by_status["complete"]:
        with Recording.open(sweep / entry["path"]) as rec:
            assert rec.status == "complete" and rec.n_steps > 0
            assert entry["final_hm"] == pytest.approx(float(rec.eval_table()["hm"][-1]))
    assert (sweep / "configs" / f"{failed['id']}.toml").exists()

    again = _ws("batch", str(path), "--jobs", "2", "--no-retry-failed", "--no-summary", env=env)
    assert again.returncode == 1
    manifest2 = json.loads((sweep / "manifest.json").read_text())
    assert [e["attempts"] for e in manifest2["runs"]] == [e["attempts"] for e in manifest["runs"]]  # nothing re-ran


def test_killed_batch_resumes_with_every_run_complete_exactly_once(
    tmp_path: Path, backbone_dir: Path, env: dict[str, str]
) -> None:
    path = _spec(tmp_path / "s.toml", "[axes]\nseed = [1, 2]\n", backbone_dir)
    sweep = tmp_path / "sweeps" / "s"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workstation", "batch", str(path), "--jobs", "1", "--no-summary"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:  # kill it once the first run is complete and the second has begun
            manifest = sweep / "manifest.json"
            if manifest.exists():
                statuses = [e["status"] for e in json.loads(manifest.read_text())["runs"]]
                if statuses.count("complete") >= 1 and "running" in statuses:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("the batch never reached its second run")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)  # children die with the driver (PR_SET_PDEATHSIG)
    # what a driver killed inside an atomic write of the manifest or of a run config leaves (seen once in a
    # suite run of the kill check): the next driver, holding the lock, removes them
    (sweep / ".manifest.json.k1ll3d.tmp").write_text('{"runs": [')
    (sweep / "configs" / ".stale.toml.k1ll3d.tmp").write_text("seed = ")
    result = _ws("batch", str(path), "--jobs", "1", "--no-summary", env=env)
    assert result.returncode == 0, result.stderr
    assert not list(sweep.glob(".*.tmp")) and not list((sweep / "configs").glob(".*.tmp"))
    entries = json.loads((sweep / "manifest.json").read_text())["runs"]
    assert [e["status"] for e in entries] == ["complete"] * 2
    recordings = sorted(p.name for p in sweep.glob("*.h5"))
    assert recordings == sorted(e["path"] for e in entries)  # one file per run, no duplicates
    for name in recordings:
        with Recording.open(sweep / name) as rec:
            assert rec.status == "complete"
    assert entries[0]["attempts"] == 1  # the run finished before the kill was not run again


def test_ray_executor_on_a_local_instance(
    tmp_path: Path, backbone_dir: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ray = pytest.importorskip("ray")
    from workstation.sweep.executors import RayExecutor
    from workstation.sweep.runner import execute

    for key in ("WS_CACHE", "PYTHONUNBUFFERED"):
        monkeypatch.setenv(key, env[key])
    spec = load_spec(_spec(tmp_path / "s.toml", "[axes]\nmethod = ['coop', 'cocoop']\n", backbone_dir))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        outcome = execute(spec, RayExecutor(None, cpus=1, gpus=0))
    finally:
        ray.shutdown()
    assert outcome.count("complete") == 2, [e.error for e in outcome.manifest.runs.values()]
    for entry in outcome.manifest.runs.values():
        with Recording.open(spec.directory / entry.path) as rec:
            assert rec.status == "complete" and rec.method in ("coop", "cocoop")


@pytest.mark.slow
def test_two_drivers_on_one_sweep_the_second_exits_2_and_the_sweep_finishes(
    tmp_path: Path, backbone_dir: Path, env: dict[str, str]
) -> None:
    path = _spec(tmp_path / "s.toml", "[axes]\nseed = [1, 2]\n", backbone_dir)
    sweep = tmp_path / "sweeps" / "s"
    command = [sys.executable, "-m", "workstation", "batch", str(path), "--no-summary"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (sweep / "manifest.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        second = _ws("batch", str(path), "--no-summary", env=env)
        assert second.returncode == 2, second.stderr
        assert len(second.stderr.strip().splitlines()) == 1 and f"pid {first.pid}" in second.stderr
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr
    finally:
        first.kill()
    entries = json.loads((sweep / "manifest.json").read_text())["runs"]
    assert [e["status"] for e in entries] == ["complete"] * 2 and [e["attempts"] for e in entries] == [1, 1]
    assert sorted(p.name for p in sweep.glob("*.h5")) == sorted(e["path"] for e in entries)
    for entry in entries:
        with Recording.open(sweep / entry["path"]) as rec:
            assert rec.complete
    assert not list(sweep.glob(".*.tmp"))


@pytest.mark.slow
def test_batch_killed_at_random_moments_then_rerun_completes_every_run_once(env: dict[str, str]) -> None:
    """The suite's small count of ``benchmarks/batch_kill.py`` (the full check kills ten times)."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "batch_kill.py"
    args = ["--kills", "2", "--runs", "2", "--max-delay", "20", "--seed", "3"]
    result = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every run complete exactly once, every file readable" in result.stdout
