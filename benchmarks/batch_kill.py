"""`ws batch` killed at random moments, then run again: every run complete exactly once, every file readable.

    python benchmarks/batch_kill.py --kills 10 [--runs 3] [--seed 17]

A small sweep (the world, a random-init tiny CLIP, 1 shot, 1 epoch, ``--runs`` seeds) is started with ``ws batch``
and its driver gets SIGKILL (its ``ws record`` children die with it): on odd attempts at a random moment up to
``--max-delay`` seconds after the start (mid-run), on even ones at a random moment within a second after a run
completes (the manifest update and the next run's start). This repeats ``--kills`` times, the last attempt is then
allowed to finish, and the script checks: exit 0, every manifest entry ``complete``, one recording per run and no
other ``.h5`` (or temporary) file, every recording opens, reads ``complete`` and is consistent. A kill only tests
something while the sweep has work left, so the script also fails when a kill found the sweep finished (raise
``--runs`` on a fast machine). Prints one line per kill and a final verdict; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from recorders.format import Recording

FAST = {"dataset": "world", "shots": 1, "epochs": 1, "warmup_epochs": 0, "views": 1, "batch_size": 8}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--max-delay", type=float, default=4.0, help="latest mid-run kill, seconds after the start")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="ws-batch-kill-") as tmp:
        root = Path(tmp)
        from recorders.clip.pretrain import random_checkpoint

        backbone = random_checkpoint(root / "clip")
        spec = root / "s.toml"
        base = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**FAST, "backbone": str(backbone)}.items())
        seeds = ", ".join(str(s) for s in range(1, args.runs + 1))
        spec.write_text(f'out = "{root / "sweeps"}"\n[base]\n{base}\n[axes]\nseed = [{seeds}]\n', encoding="utf-8")
        env = {**os.environ, "WS_CACHE": str(root / "cache")}
        command = [sys.executable, "-m", "workstation", "batch", str(spec), "--no-summary"]
        sweep = root / "sweeps" / "s"
        idle = 0  # kills that found nothing left to interrupt
        for kill in range(args.kills):
            before = _complete(sweep) or 0
            proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            start = time.monotonic()
            moment = "after a run completed" if kill % 2 else "mid-run"
            if kill % 2:
                while (_complete(sweep) or 0) <= before and proc.poll() is None and time.monotonic() - start < 300:
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.0))
            else:
                time.sleep(rng.uniform(0.5, args.max_delay))
            delay = time.monotonic() - start
            ended = proc.poll() is not None
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            time.sleep(0.3)  # its children die with it (PR_SET_PDEATHSIG)
            done = _complete(sweep)
            idle += ended or done == args.runs
            print(f"kill {kill + 1}: {moment}, {delay:.1f}s{' (had already ended)' if ended else ''}; {done} complete")
        final = subprocess.run(command, env=env, capture_output=True, text=True)
        problems = _check(sweep, args.runs, final)
        if idle:
            problems.append(f"{idle} of {args.kills} kills found the sweep finished: raise --runs or lower --max-delay")
        print("result:", "every run complete exactly once, every file readable" if not problems else problems)
        return 1 if problems else 0


def _complete(sweep: Path) -> int | None:
    """Runs the sweep's manifest marks complete; None while it cannot be read (not yet written, or mid-replace)."""
    try:
        return sum(e["status"] == "complete" for e in json.loads((sweep / "manifest.json").read_text())["runs"])
    except (OSError, ValueError, KeyError):
        return None


def _check(sweep: Path, runs: int, final: subprocess.CompletedProcess[str]) -> list[str]:
    problems = []
    if final.returncode != 0:
        problems.append(f"the last batch exited {final.returncode}: {final.stderr.strip().splitlines()[-1:]}")
    entries = json.loads((sweep / "manifest.json").read_text())["runs"]
    if len(entries) != runs or any(e["status"] != "complete" for e in entries):
        problems.append(f"manifest: {[e['status'] for e in entries]}")
    files = sorted(p.name for p in sweep.iterdir() if p.suffix == ".h5" or p.name.endswith(".tmp"))
    if files != sorted(e["path"] for e in entries):
        problems.append(f"files {files} != manifest paths")
    for entry in entries:
        try:
            with Recording.open(sweep / entry["path"]) as rec:
                if not rec.complete:
                    problems.append(f"{entry['path']}: {rec.status} {rec.inconsistency()}")
        except Exception as exc:  # noqa: BLE001 - any failure to read is what this script looks for
            problems.append(f"{entry['path']}: {exc}")
    return problems


if __name__ == "__main__":
    raise SystemExit(main())
