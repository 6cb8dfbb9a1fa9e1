"""Responsiveness of `ws view` on a large recording: 100k steps × 1,024 gates.

Prints measured figures against the targets (2-core machine): launch to first complete paint ≤ 1.5 s, one cursor
step ≤ 50 ms, peak memory ≤ 400 MB. The viewer runs headless (Textual's run_test) in a fresh subprocess, so
the launch time includes Python start-up and imports, and the peak RSS is the viewer's alone.

    python benchmarks/viewer.py [--steps 100000] [--gates 1024] [--file PATH] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGETS = {
    "first_paint_s": 1.5,
    "cursor_step_ms": 50.0,
    "cursor_step_during_diagnostics_max_ms": 50.0,
    "peak_rss_mb": 400.0,
}


def make_recording(path: Path, n_steps: int, n_gates: int, block: int = 4096) -> None:
    """A collapsing run written block by block (memory stays at one block)."""
    from recorders.format import (
        EPOCH,
        LR,
        STEP,
        GateSetSpec,
        GroupSpec,
        Layout,
        PromptSpec,
        RecordingWriter,
        dsigmoid_from_logit,
        gate_path,
        grad_norm_path,
        loss_path,
        prompt_path,
    )

    layout = Layout(
        loss_terms=("total", "ce"),
        groups=(GroupSpec("ctx", "prompt", n_gates * 512), GroupSpec("gates", "gate", n_gates)),
        gate_sets=(GateSetSpec("ctx_gates", n_gates, "length", prompt="ctx", group="gates"),),
        prompts=(PromptSpec("ctx", n_gates, "ctx"),),
    )
    rng = np.random.default_rng(0)
    with RecordingWriter(
        path, layout, config={"variant": "bench"}, method="coop-gating", seed=0, device="cpu", flush_every=block
    ) as writer:
        for start in range(0, n_steps, block):
            steps = np.arange(start, min(start + block, n_steps))
            n = len(steps)
            logit = (3.0 * np.exp(-steps / n_steps)[:, None] + rng.normal(0, 0.05, (n, n_gates))).astype("f4")
            prompt_grad = rng.lognormal(-4, 0.3, (n, n_gates)).astype("f4")
            gate_grad = prompt_grad * (1e-3 * np.exp(-steps / 5000))[:, None]
            writer.append_block(
                {
                    STEP: steps,
                    EPOCH: steps // 1000,
                    LR: 0.002 * np.cos(steps / n_steps),
                    loss_path("total"): 2 * np.exp(-steps / 20000) + rng.random(n) * 0.1,
                    loss_path("ce"): np.ones(n),
                    grad_norm_path("ctx"): np.linalg.norm(prompt_grad, axis=1),
                    grad_norm_path("gates"): np.linalg.norm(gate_grad, axis=1),
                    gate_path("ctx_gates", "logit"): logit,
                    gate_path("ctx_gates", "value"): 1 / (1 + np.exp(-logit)),
                    gate_path("ctx_gates", "dsigmoid"): dsigmoid_from_logit(logit),
                    gate_path("ctx_gates", "grad"): gate_grad,
                    prompt_path("ctx", "grad_norm"): prompt_grad,
                    prompt_path("ctx", "norm"): np.ones((n, n_gates), "f4"),
                }
            )
            if start % 20000 == 0:
                writer.add_event(int(steps[-1]), "epoch_end", "")


async def measure(path: Path, started: float, n_keys: int) -> dict[str, float]:
    """In the child: launch the app, wait for the first complete frame, step the cursor ``n_keys`` times.

    Times are taken when a frame has been *written*: the headless driver is told it is a terminal, so every frame
    is composed and encoded to escape sequences as it would be for a real one (the bytes are then discarded). A
    cursor step is timed from the key event entering the app to the end of the first frame showing the new row;
    keys are sent 60 ms apart, like a held key's auto-repeat, so each step starts from an idle app.
    """
    from textual import events
    from textual.drivers.headless_driver import HeadlessDriver

    import workstation.cli  # noqa: F401 - what `ws view` imports before the app
    from workstation.app.app import WsApp
    from workstation.app.screens.stepping import StepScreen
    from workstation.app.widgets.plot import StepPlot

    HeadlessDriver.is_headless = property(lambda self: False)  # type: ignore[method-assign,assignment]
    frames: list[tuple[float, int]] = []  # (time the frame was written, screen row it showed)
    new_frame = asyncio.Event()

    class TimedApp(WsApp):
        def _display(self, screen, renderable) -> None:  # type: ignore[no-untyped-def]
            super()._display(screen, renderable)
            if renderable is not None:
                frames.append((time.perf_counter(), getattr(self.screen, "row", -1)))
                new_frame.set()

    out: dict[str, float] = {"imports_s": time.time() - started}
    launched = time.time()
    app = TimedApp([path])

    def painted() -> bool:  # every plot but the diagnostic ratio has its data
        plots = [p for p in app.screen.query(StepPlot) if p.id != "ratio"]
        return bool(plots) and all(p.payload is not None for p in plots)

    async def frame_showing(row: int) -> float:
        while not (frames and frames[-1][1] == row):
            new_frame.clear()
            await new_frame.wait()
        return frames[-1][0]

    async with app.run_test(size=(200, 60)) as pilot:
        while not painted():
            new_frame.clear()
            await new_frame.wait()
        out["first_paint_s"] = time.time() - started
        out["first_paint_cpu_s"] = time.process_time()  # CPU of this process (every thread) since it started
        out["app_start_to_paint_s"] = time.time() - launched
        screen = app.screen
        assert isinstance(screen, StepScreen)

        async def step(key: str, delta: int | None = None, to: int = 0) -> tuple[float, float]:
            """Wall and process CPU seconds from the key event to the frame showing row ``to`` or row + ``delta``."""
            await asyncio.sleep(0.06)
            target = to if delta is None else screen.row + delta
            t, cpu = time.perf_counter(), time.process_time()
            app.post_message(events.Key(key, None))
            return await frame_showing(target) - t, time.process_time() - cpu

        early = [await step("right", 1) for _ in range(10)]  # while the diagnostics run (a spawned process)
        out["cursor_step_during_diagnostics_max_ms"] = 1000 * max(wall for wall, _ in early)
        while screen.diagnostics[0] is None:
            await asyncio.sleep(0.01)
        await pilot.pause()
        out["diagnostics_done_s"] = time.time() - started
        wall, cpu = np.array([await step("right", 1) for _ in range(n_keys)]).T
        out["cursor_step_ms"] = 1000 * float(np.median(wall))
        out["cursor_step_p95_ms"] = 1000 * float(np.percentile(wall, 95))
        out["cursor_step_cpu_ms"] = 1000 * float(np.median(cpu))
        out["cursor_100_steps_ms"] = 1000 * float(np.median([(await step("L", 100))[0] for _ in range(5)]))
        jumps = [await step(key, to=to) for key, to in [("end", screen.n_rows - 1), ("home", 0)] * 3]
        out["jump_first_last_ms"] = 1000 * float(np.median([wall for wall, _ in jumps]))  # every plot's column moves
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["diagnostics_process_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    out["load_average_1min"] = os.getloadavg()[0]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--gates", type=int, default=1024)
    parser.add_argument("--file", type=Path, help="reuse (or create) the recording here")
    parser.add_argument("--keys", type=int, default=40, help="cursor steps to time")
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(asyncio.run(measure(args.file, args.child, args.keys))))
        return
    tmp = tempfile.TemporaryDirectory()
    path = args.file or Path(tmp.name) / "bench.h5"
    if not path.exists():
        t = time.perf_counter()
        make_recording(path, args.steps, args.gates)
        print(
            f"wrote {args.steps:,} steps × {args.gates:,} gates ({path.stat().st_size / 2**20:,.0f} MiB) "
            f"in {time.perf_counter() - t:.1f} s"
        )
    started = time.time()
    child = subprocess.run(
        [sys.executable, __file__, "--file", str(path), "--keys", str(args.keys), "--child", repr(started)],
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(child.stdout.strip().splitlines()[-1])
    for name, value in figures.items():
        target = TARGETS.get(name)
        verdict = "" if target is None else f"  (target ≤ {target:g}: {'ok' if value <= target else 'MISSED'})"
        print(f"{name:>22}: {value:10.3f}{verdict}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
