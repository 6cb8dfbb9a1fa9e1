"""What full per-step recording costs: training-time ratio, writer throughput, bytes per step, host syncs.

    python benchmarks/recording_overhead.py [--steps 1000] [--repeats 5] [--device cpu|cuda]

1. Trains the synthetic demo (``recorders.demo.run_demo``) with recording off and with every gate set, group and
   prompt recorded each step, alternating in one process, and prints the median time ratio (target <= 1.05).
2. Appends rows of 1024 float32 values (one prompt set of 512 tokens: ``grad_norm`` + ``norm``) with
   ``RecordingWriter.append_block`` in blocks of 256 and prints rows/s (target >= 100k rows/s).
3. Times one demo training step and one ``Probe.after_backward`` call (the per-step cost, which carries over to
   other methods: a recording costs ``probe µs / step µs``), and prints the demo recording's bytes per step.
4. With ``--device cuda``: counts host syncs (``torch.cuda.set_sync_debug_mode("warn")``) inside
   ``Probe.after_backward`` outside block flushes (target 0) and in the flushes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from recorders import probes
from recorders.demo import run_demo
from recorders.recording_format import STEP, Layout, PromptSpec, RecordingWriter


def training_ratio(steps: int, repeats: int, device: str, directory: Path) -> tuple[float, float, float]:
    """Median seconds without and with recording, and the median of the per-repeat ratios."""
    run_demo(directory / "warmup.h5", steps=20, device=device)
    off, on = [], []
    for i in range(repeats):
        t = time.perf_counter()
        run_demo(steps=steps, device=device, record=False)
        off.append(time.perf_counter() - t)
        t = time.perf_counter()
        run_demo(directory / f"on{i}.h5", steps=steps, device=device, flush_every=256)
        on.append(time.perf_counter() - t)
    ratios = [b / a for a, b in zip(off, on, strict=True)]
    return statistics.median(off), statistics.median(on), statistics.median(ratios)


def probe_microseconds(device: str, directory: Path, steps: int = 200, repeats: int = 5) -> tuple[float, float]:
    """Median µs of one demo training step and of one ``Probe.after_backward`` call on it (no flush inside)."""
    import torch
    import torch.nn.functional as F

    from recorders.demo import DemoConfig, DemoModel

    cfg = DemoConfig()
    model = DemoModel(cfg, torch.Generator().manual_seed(0)).to(device)
    optimizer = torch.optim.SGD([{"params": [model.ctx], "name": "prompt", "role": "prompt"},
                                 {"params": [*model.ctx_gates.parameters(), *model.instance_gates.parameters()],
                                  "name": "gates", "role": "gate"}], lr=cfg.lr, momentum=0.9, weight_decay=5e-4)
    probe = probes.watch(model, optimizer, prompts={"ctx": model.ctx}, loss_terms=("total", "ce"),
                         block=steps * repeats + 1)
    writer = RecordingWriter(directory / "probe.h5", probe.layout, config={}, method="bench", seed=0, device=device)
    probe.attach(writer)
    x = torch.randn(cfg.batch, cfg.in_dim, device=device)
    y = torch.randint(cfg.n_classes // 2, (cfg.batch,), device=device)
    train, measure = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            loss = F.cross_entropy(model(x)[:, : cfg.n_classes // 2], y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _synchronize(device)
        train.append((time.perf_counter() - t) / steps * 1e6)
        t = time.perf_counter()
        for step in range(steps):
            probe.after_backward(step, 0, cfg.lr, {"total": loss, "ce": loss})
        _synchronize(device)
        measure.append((time.perf_counter() - t) / steps * 1e6)
    writer.close()
    return statistics.median(train), statistics.median(measure)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def writer_rows_per_second(directory: Path, rows: int = 100_000, block: int = 256,
                           repeats: int = 5) -> tuple[float, float]:
    """Median rows per wall-clock second and per CPU second of ``append_block`` for rows of 1024 float32 values
    (one prompt set of 512 tokens), including the SWMR flush after each block of ``block`` rows. The CPU figure is
    what the writer costs when other processes share the cores."""
    layout = Layout(loss_terms=(), prompts=(PromptSpec("p", 512),))
    rng = np.random.default_rng(0)
    data = {path: rng.random((block, *shape)).astype(dtype) for path, (shape, dtype) in
            layout.step_series().items()}
    wall, cpu = [], []
    for r in range(repeats):
        writer = RecordingWriter(directory / f"writer{r}.h5", layout, config={}, method="bench", seed=0,
                                 device="cpu", flush_every=block)
        t, c = time.perf_counter(), time.process_time()
        for start in range(0, rows, block):
            data[STEP] = np.arange(start, start + block)
            writer.append_block(data)
        writer.close()
        wall.append(rows / (time.perf_counter() - t))
        cpu.append(rows / (time.process_time() - c))
        (directory / f"writer{r}.h5").unlink()
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
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        off, on, ratio = training_ratio(args.steps, args.repeats, args.device, directory)
        print(f"demo training, {args.steps} steps on {args.device}: off {off:.3f} s, recorded {on:.3f} s, "
              f"median ratio {ratio:.3f} (target <= 1.05)")
        step_us, probe_us = probe_microseconds(args.device, directory)
        print(f"per step: training {step_us:,.0f} µs, Probe.after_backward {probe_us:,.0f} µs "
              f"({probe_us / step_us:.1%}; ratio <= 1.05 needs steps of >= {20 * probe_us:,.0f} µs)")
        recording = directory / "on0.h5"
        print(f"bytes per step: {recording.stat().st_size / args.steps:,.0f} "
              f"({recording.stat().st_size:,} bytes for {args.steps} steps, including the strided ctx gradients)")
        wall, cpu = writer_rows_per_second(directory)
        print(f"writer: {wall:,.0f} rows/s ({cpu:,.0f} per CPU second) for 1024-float32 rows via append_block "
              "(target >= 100,000)")
        if args.device.startswith("cuda"):
            calls, outside, in_flush = count_syncs(args.steps, directory)
            print(f"host syncs: {outside} in {calls} after_backward calls outside block flushes "
                  f"({outside / max(calls, 1):.3f} per step, target 0); {in_flush} inside the flushes")


if __name__ == "__main__":
    main()
