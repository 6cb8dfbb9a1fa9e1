"""What full per-step recording costs: training-time ratio, writer throughput, bytes per step, host syncs.

    python benchmarks/recording_overhead.py [--steps 32] [--repeats 120] [--device cpu|cuda] [--threads 1]

1. Trains the synthetic demo model (``recorders.train.demo``) in alternating (ABBA) chunks of ``--steps`` steps with
   recording off and with every gate set, group and prompt recorded each step (blocks of 256 rows flushed to a
   real file), in one process, and prints the time ratio over all chunks (target <= 1.05) with a 95% bootstrap
   interval, and the time spent in ``Probe.after_backward`` (and of that in block flushes). Short chunks pair up
   under a shared machine's drift.
   Then the same without the instance gate's per-input ratio factors, the part of the recording that grows with
   the batch.
2. Appends rows of 1024 float32 values (one prompt set of 512 tokens: ``grad_norm`` + ``norm``) with
   ``RecordingWriter.append_block`` in blocks of 256 and prints rows/s (target >= 100k rows/s), with the
   Fletcher-32 checksums every recording carries and, for comparison, without them.
3. Records a demo run (``run_demo``) and prints its bytes per step.
4. ``--methods`` (default ``cocoop-gating,adaptive-bimaple``; ``""`` skips): the same alternating ratio for real
   methods on the built-in tiny CLIP (18 world classes, preset batch sizes, random inputs) with full tracing:
   every series, the ratio factors, the regulariser parts, strided tensors; the plain chunks switch the gates'
   capture off.
5. With ``--device cuda``: counts host syncs (``torch.cuda.set_sync_debug_mode("warn")``) inside
   ``Probe.after_backward`` outside block flushes (target 0) and in the flushes.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recorders.format import STEP, Layout, PromptSpec, RecordingWriter
from recorders.format import writer as writer_module
from recorders.methods.gates import find_gates
from recorders.train import probes
from recorders.train.demo import DemoConfig, DemoModel, demo_optimizer, run_demo

DEMO_STEPS = 1000


@dataclass
class Overhead:
    """µs per training step without and with recording, µs per ``after_backward`` and of that in block flushes
    (device → host copy, derived series, file write), and the time ratio (recorded / plain, over all chunks) with a
    95% bootstrap interval over chunk pairs."""

    off_us: float
    on_us: float
    probe_us: float
    ratio: float
    ratio_low: float
    ratio_high: float
    flush_us: float = math.nan


def training_overhead(
    device: str, directory: Path, steps: int, repeats: int, instance_factors: bool = True
) -> Overhead:
    """Train the demo model in ``repeats`` pairs of chunks of ``steps`` steps, one without and one with full
    per-step recording, in ABBA order (so slow drifts of a shared machine hit both sides alike).

    ``instance_factors=False`` records everything but the instance gate's per-input ratio factors (its
    ``vector_dim`` set to 0), which shows what they cost.

    The recorded chunks call ``Probe.after_backward`` every step and flush blocks of 256 rows to a real file, so
    the recorded total includes every block flush; the unrecorded chunks also switch off the gates' capture (logits
    and the gated vectors' gradients), so they are plain training. The ratio is total recorded time over total plain
    time.
    """
    import torch
    import torch.nn.functional as F

    cfg = DemoConfig()
    model = DemoModel(cfg, torch.Generator().manual_seed(0)).to(device)
    if not instance_factors:
        model.instance_gates.vector_dim = 0
    optimizer = demo_optimizer(model, cfg)
    probe = probes.watch(
        model, optimizer, prompts={"ctx": model.ctx}, loss_terms=("total", "ce"), tensors={"ctx": (model.ctx, 10)}
    )
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(cfg.batch, cfg.in_dim, generator=generator).to(device)
    y = torch.randint(cfg.n_classes // 2, (cfg.batch,), generator=generator).to(device)
    counter = itertools.count()

    def chunk(record: bool) -> tuple[float, float]:
        for gate in find_gates(model).values():  # capture (logits, gated vectors) is part of recording
            gate.capture = record
        in_probe = 0.0
        start = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x)[:, : cfg.n_classes // 2], y)
            optimizer.zero_grad()
            loss.backward()
            if record:
                t = time.perf_counter()
                probe.after_backward(next(counter), 0, cfg.lr, {"total": loss, "ce": loss})
                in_probe += time.perf_counter() - t
            optimizer.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start, in_probe

    flush, in_flush = probe.flush, [0.0]

    def timed_flush() -> None:
        t = time.perf_counter()
        flush()
        in_flush[0] += time.perf_counter() - t

    probe.flush = timed_flush  # type: ignore[method-assign]
    off, on, in_probe = np.zeros(repeats), np.zeros(repeats), np.zeros(repeats)
    path = directory / ("overhead.h5" if instance_factors else "overhead-no-instance-factors.h5")
    with RecordingWriter(path, probe.layout, config={}, method="bench", seed=0, device=device) as writer:
        probe.attach(writer)
        chunk(record=False)  # warm-up
        for i in range(repeats):
            for record in (False, True) if i % 2 == 0 else (True, False):
                if record:
                    on[i], in_probe[i] = chunk(record=True)
                else:
                    off[i] = chunk(record=False)[0]
        flushed = in_flush[0]  # the chunks' block flushes, not the last one in close()
        probe.close()
    pairs = np.random.default_rng(0).integers(repeats, size=(10_000, repeats))
    low, high = np.quantile(on[pairs].sum(1) / off[pairs].sum(1), [0.025, 0.975])
    per_step = 1e6 / (repeats * steps)
    return Overhead(
        off.sum() * per_step,
        on.sum() * per_step,
        in_probe.sum() * per_step,
        float(on.sum() / off.sum()),
        float(low),
        float(high),
        flushed * per_step,
    )


def method_overhead(name: str, device: str, steps: int, repeats: int, directory: Path) -> Overhead:
    """Alternating chunks of ``steps`` training steps of method ``name`` without and with full recording."""
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from methods import WORLD_BASE, Stepper

    from recorders.clip.backbone import load_backbone
    from recorders.data.world import load_world
    from recorders.train.loop import loss_terms, tensor_stride

    backbone = load_backbone("builtin", device)
    s = Stepper(backbone, name, load_world().classnames[:WORLD_BASE])
    probe = probes.watch(
        s.method,
        s.optimizer,
        prompts=s.method.prompt_params(),
        loss_terms=loss_terms(s.method),
        tensors={k: (p, tensor_stride(p, 10)) for k, p in s.method.strided_tensors().items()},
        regularisers=s.method.gate_regularisers,
    )
    gates = list(find_gates(s.method).values())
    capture = [g.capture for g in gates]

    def chunk(record: bool) -> float:
        for g, on in zip(gates, capture, strict=True):
            g.capture = on and record
        start = time.perf_counter()
        for _ in range(steps):
            s.step(probe if record else None)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    off, on = np.zeros(repeats), np.zeros(repeats)
    with RecordingWriter(directory / f"{name}.h5", probe.layout, config={}, method=name, seed=0, device=device) as w:
        probe.attach(w)
        chunk(record=False)
        chunk(record=True)  # warm-up both ways
        for i in range(repeats):
            for record in (False, True) if i % 2 == 0 else (True, False):
                if record:
                    on[i] = chunk(record=True)
                else:
                    off[i] = chunk(record=False)
        probe.close()
    pairs = np.random.default_rng(0).integers(repeats, size=(10_000, repeats))
    low, high = np.quantile(on[pairs].sum(1) / off[pairs].sum(1), [0.025, 0.975])
    per_step = 1e6 / (repeats * steps)
    ratio = float(on.sum() / off.sum())
    return Overhead(off.sum() * per_step, on.sum() * per_step, math.nan, ratio, float(low), float(high))


def writer_rows_per_second(
    directory: Path, rows: int = 100_000, block: int = 256, repeats: int = 5, checksums: bool = True
) -> tuple[float, float]:
    """Median rows per wall-clock second and per CPU second of ``append_block`` for rows of 1024 float32 values
    (one prompt set of 512 tokens), including the SWMR flush after each block of ``block`` rows. The CPU figure is
    what the writer costs when other processes share the cores."""
    layout = Layout(loss_terms=(), prompts=(PromptSpec("p", 512),))
    rng = np.random.default_rng(0)
    data = {path: rng.random((block, *shape)).astype(dtype) for path, (shape, dtype) in layout.step_series().items()}
    wall, cpu = [], []
    writer_module.FLETCHER32 = checksums
    for r in range(repeats):
        writer = RecordingWriter(
            directory / f"writer{r}.h5", layout, config={}, method="bench", seed=0, device="cpu", flush_every=block
        )
        t, c = time.perf_counter(), time.process_time()
        for start in range(0, rows, block):
            data[STEP] = np.arange(start, start + block)
            writer.append_block(data)
        writer.close()
        wall.append(rows / (time.perf_counter() - t))
        cpu.append(rows / (time.process_time() - c))
        (directory / f"writer{r}.h5").unlink()
    writer_module.FLETCHER32 = True
    return statistics.median(wall), statistics.median(cpu)


def count_syncs(steps: int, directory: Path) -> tuple[int, int, int]:
    """(after_backward calls, syncs in after_backward outside flushes, syncs inside flushes) on CUDA."""
    import torch

    counts = {"calls": 0, "outside": 0, "flush": 0}
    caught: list[warnings.WarningMessage] = []
    after_backward, flush = probes.Probe.after_backward, probes.Probe.flush

    def counted_flush(self: probes.Probe) -> None:
        before = len(caught)
        flush(self)
        counts["flush"] += len(caught) - before
        del caught[before:]

    def counted_after_backward(self: probes.Probe, *args: object, **kwargs: object) -> None:
        before = len(caught)
        after_backward(self, *args, **kwargs)  # type: ignore[arg-type]
        counts["calls"] += 1
        counts["outside"] += len(caught) - before

    probes.Probe.after_backward, probes.Probe.flush = counted_after_backward, counted_flush  # type: ignore[method-assign]
    try:
        with warnings.catch_warnings(record=True) as log:
            warnings.simplefilter("always")
            caught = log
            torch.cuda.set_sync_debug_mode("warn")
            try:
                run_demo(directory / "sync.h5", steps=steps, device="cuda", flush_every=256)
            finally:
                torch.cuda.set_sync_debug_mode(0)
    finally:
        probes.Probe.after_backward, probes.Probe.flush = after_backward, flush  # type: ignore[method-assign]
    return counts["calls"], counts["outside"], counts["flush"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=32, help="steps per chunk")
    parser.add_argument("--repeats", type=int, default=120, help="chunks each way")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (1: steady figures on a machine whose cores are shared)",
    )
    parser.add_argument("--methods", default="cocoop-gating,adaptive-bimaple", help="comma-separated; '' skips")
    parser.add_argument("--method-steps", type=int, default=8, help="steps per chunk for --methods")
    parser.add_argument(
        "--method-repeats",
        type=int,
        default=64,
        help="chunks each way for --methods (the default 64 × 8 recorded steps span two 256-row blocks: flushes count)",
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        o = training_overhead(args.device, directory, args.steps, args.repeats)
        print(
            f"demo training on {args.device}, {args.repeats} × {args.steps} steps each way, alternating: "
            f"{o.off_us:,.0f} µs/step off, {o.on_us:,.0f} µs/step recorded, ratio {o.ratio:.3f} "
            f"[95% bootstrap {o.ratio_low:.3f}, {o.ratio_high:.3f}] (target <= 1.05); "
            f"Probe.after_backward {o.probe_us:,.0f} µs/step, of which block flushes {o.flush_us:,.0f}"
        )
        o = training_overhead(args.device, directory, args.steps, args.repeats, instance_factors=False)
        demo = DemoConfig()
        print(
            f"  the same without the instance gate's per-input ratio factors ({demo.batch} inputs × {demo.n_ctx} "
            f"gates × {demo.dim} values a step): ratio {o.ratio:.3f} [{o.ratio_low:.3f}, {o.ratio_high:.3f}]; "
            f"Probe.after_backward {o.probe_us:,.0f} µs/step, of which block flushes {o.flush_us:,.0f}"
        )
        recording = run_demo(directory / "demo.h5", steps=DEMO_STEPS, device=args.device)
        print(
            f"bytes per step: {recording.stat().st_size / DEMO_STEPS:,.0f} ({recording.stat().st_size:,} bytes "
            f"for a {DEMO_STEPS}-step demo recording, including the ctx gradient every 10 steps)"
        )
        wall, cpu = writer_rows_per_second(directory)
        plain_wall, plain_cpu = writer_rows_per_second(directory, checksums=False)
        print(
            f"writer: {wall:,.0f} rows/s ({cpu:,.0f} per CPU second) for 1024-float32 rows via append_block, "
            f"with Fletcher-32 checksums (target >= 100,000); without them {plain_wall:,.0f} rows/s "
            f"({plain_cpu:,.0f} per CPU second): checksums cost ×{plain_cpu / cpu:.2f} CPU time"
        )
        for name in filter(None, args.methods.split(",")):
            m = method_overhead(name, args.device, args.method_steps, args.method_repeats, directory)
            print(
                f"{name} on the built-in tiny CLIP ({args.device}), {args.method_repeats} × {args.method_steps} steps "
                f"each way, alternating: {m.off_us / 1e3:,.1f} ms/step off, {m.on_us / 1e3:,.1f} ms/step with full "
                f"tracing, ratio {m.ratio:.3f} [95% bootstrap {m.ratio_low:.3f}, {m.ratio_high:.3f}] (target <= 1.05)"
            )
        if args.device.startswith("cuda"):
            calls, outside, in_flush = count_syncs(args.steps, directory)
            print(
                f"host syncs: {outside} in {calls} after_backward calls outside block flushes "
                f"({outside / max(calls, 1):.3f} per step, target 0); {in_flush} inside the flushes"
            )


if __name__ == "__main__":
    main()
