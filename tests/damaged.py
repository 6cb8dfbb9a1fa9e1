"""Damaged recordings for the robustness tests: a small real recording (complete or killed), seeded byte flips and
truncations of it, and the structural edits a careless tool or a bad disk makes. Torch-free and fast.

Any test may use it: ``from damaged import ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

# A writer child: two blocks of 100 rows with every kind of dataset (gates with decomposition, instance gates,
# prompts, a strided tensor, evals, events), then a clean close (``complete``) or os._exit (``killed``: the file
# keeps its SWMR flags and status ``running``, as after kill -9), or a killed file with no rows (``empty``).
WRITER = """
import os, sys
import numpy as np
from recorders import format as rf
path, mode = sys.argv[1], sys.argv[2]
layout = rf.Layout(
    loss_terms=("total", "ce"),
    groups=(rf.GroupSpec("ctx", "prompt", 32), rf.GroupSpec("gates", "gate", 4)),
    gate_sets=(
        rf.GateSetSpec("g", 4, "length", prompt="p", group="gates", decomposition=True, init_logit=(0.0,) * 4,
                       labels=("a", "b", "c", "d")),
        rf.GateSetSpec("ig", 3, "instance"),
    ),
    prompts=(rf.PromptSpec("p", 4, "ctx"),),
    tensors=(rf.TensorSpec("p_grad", (4, 8), 10),),
)
w = rf.RecordingWriter(path, layout, config={"method": "coop-gating", "lr": 0.1}, method="coop-gating", seed=0,
                       device="cpu", dataset="world", flush_every=10**9, flush_seconds=1e9)
rng = np.random.default_rng(0)
n = 100
for b in range(0 if mode == "empty" else 2):
    steps = np.arange(b * n, (b + 1) * n)
    block = {p: rng.random((n, *shape)).astype(dt) for p, (shape, dt) in layout.step_series().items()}
    block[rf.STEP], block[rf.EPOCH] = steps, (steps // 50).astype(np.int32)
    w.append_block(block)
    for s in steps[::10]:
        w.add_tensor("p_grad", int(s), rng.random((4, 8)).astype(np.float32))
    w.add_eval(int(steps[-1]), b, 0.5 + 0.1 * b, 0.4)
    w.add_event(int(steps[-1]), "epoch_end", f"epoch {b} done")
    w.flush()
if mode != "complete":
    w.flush()
    os._exit(0)
w.close()
"""


def write_recording(path: Path, mode: str = "complete") -> Path:
    """A real recording written by a child process: ``complete``, ``killed`` (running, 200 rows) or ``empty``
    (running, no rows)."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run([sys.executable, "-c", WRITER, str(path), mode], check=True, env=env, timeout=120)
    return path


def flipped(src: Path, dst: Path, offsets: list[int]) -> Path:
    """A copy of ``src`` with the byte at each offset inverted."""
    data = bytearray(src.read_bytes())
    for offset in offsets:
        data[offset] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def truncated(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def metadata_offsets(path: Path) -> list[int]:
    """Offsets of the object headers (``OHDR``), heaps and B-tree nodes in a file: flipping a byte just after one
    breaks a metadata checksum."""
    data = path.read_bytes()
    out = []
    for signature in (b"OHDR", b"GCOL", b"BTHD", b"BTLF", b"FRHP", b"FHDB", b"OCHK"):
        start = 0
        while (found := data.find(signature, start)) >= 0:
            out.append(found)
            start = found + 1
    return sorted(out)


def random_variants(src: Path, out: Path, n: int, seed: int) -> list[Path]:
    """``n`` seeded variants of ``src``: half with a few bytes flipped (biased to metadata), half truncated at a
    random length (biased to the first 48 bytes, the superblock)."""
    rng = np.random.default_rng(seed)
    size = src.stat().st_size
    meta = metadata_offsets(src)
    variants = []
    for i in range(n):
        dst = out / f"{src.stem}-{seed}-{i}.h5"
        if i % 2 == 0:
            near_meta = [int(rng.choice(meta)) + int(rng.integers(0, 64)) for _ in range(int(rng.integers(1, 3)))]
            anywhere = [int(rng.integers(0, size))]
            variants.append(flipped(src, dst, [min(o, size - 1) for o in near_meta + anywhere]))
        else:
            cut = int(rng.integers(0, 48)) if i % 4 == 1 else int(rng.integers(48, size))
            variants.append(truncated(src, dst, cut))
    return variants


def _edit(src: Path, dst: Path, change: Callable[[h5py.File], None]) -> Path:
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        change(f)
    return dst


def _resize(path: str, rows: int) -> Callable[[h5py.File], None]:
    return lambda f: f[path].resize(rows, axis=0)


def _replace_with_group(path: str) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        del f[path]
        f.create_group(path)

    return change


def _external_link(path: str, target: Path) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        del f[path]
        f[path] = h5py.ExternalLink(str(target), "/data")

    return change


def _layout_gates(n_gates: int) -> Callable[[h5py.File], None]:
    def change(f: h5py.File) -> None:
        layout = json.loads(f.attrs["layout"])
        layout["gate_sets"][0]["n_gates"] = n_gates
        f.attrs["layout"] = json.dumps(layout)

    return change


def _break_heap_reference(path: Path, dataset: str) -> None:
    """Point the first string of ``dataset`` (variable-length, in the global heap) at offset 48, which holds no
    heap collection: reading it fails with HDF5's "bad global heap collection signature"."""
    with h5py.File(path, "r") as f:
        offset = f[dataset].id.get_chunk_info(0).byte_offset
    data = bytearray(path.read_bytes())
    data[offset + 4 : offset + 12] = (48).to_bytes(8, "little")  # 4-byte length, 8-byte heap address, 4-byte index
    path.write_bytes(bytes(data))


def _old_event_encoding(f: h5py.File) -> None:
    """Rewrite the events as files written before the fixed-size encoding hold them: ``events/kind`` and
    ``events/message`` as variable-length strings in the global heap (the encoding a damaged heap can break)."""
    spans, text = f["events/span"][:], f["events/text"][:].tobytes()
    kinds = [text[o : o + k].decode() for o, k, _ in spans]
    messages = [text[o + k : o + k + m].decode() for o, k, m in spans]
    for name in ("span", "text"):
        del f[f"events/{name}"]
    for name, values in (("kind", kinds), ("message", messages)):
        f.create_dataset(f"events/{name}", data=values, dtype=h5py.string_dtype(), chunks=(256,), maxshape=(None,))


def _empty_gate_dataset(f: h5py.File) -> None:
    del f["gates/g/value"]
    f.create_dataset("gates/g/value", shape=(0,), dtype="float32")


# Each damaged kind: a function (complete file, output directory) → damaged file, and the message ws gives.
def structural_edits(src: Path, out: Path) -> dict[str, tuple[Path, str]]:
    """One file per damaged kind named in issue 16, each with the part of the message every reader must give."""
    out.mkdir(parents=True, exist_ok=True)
    heap = _edit(src, out / "events-heap.h5", _old_event_encoding)
    _break_heap_reference(heap, "events/message")
    return {
        "config-not-json": (
            _edit(src, out / "config-not-json.h5", lambda f: f.attrs.__setitem__("config", "{not json")),
            "the config attribute is not a JSON object",
        ),
        "config-json-list": (
            _edit(src, out / "config-json-list.h5", lambda f: f.attrs.__setitem__("config", "[1, 2]")),
            "the config attribute is not a JSON object",
        ),
        "events-kind-short": (
            _edit(src, out / "events-kind-short.h5", _resize("events/span", 1)),
            "events is damaged (columns of unequal length",
        ),
        "events-heap": (heap, "events is damaged"),
        "empty-gate-dataset": (
            _edit(src, out / "empty-gate-dataset.h5", _empty_gate_dataset),
            "gates/g/value is damaged (shape (0,)",
        ),
        "gate-series-short": (
            _edit(src, out / "gate-series-short.h5", _resize("gates/g/logit", 150)),
            "gates/g/logit is damaged (150 rows, steps/step has 200)",
        ),
        "gate-set-group": (
            _edit(src, out / "gate-set-group.h5", _replace_with_group("gates/g/grad")),
            "gates/g/grad is damaged (a group, not a dataset)",
        ),
        "external-link": (
            _edit(src, out / "external-link.h5", _external_link("gates/g/dsigmoid", out / "elsewhere.h5")),
            "gates/g/dsigmoid is damaged (an external link, not a dataset)",
        ),
        "layout-n-gates": (
            _edit(src, out / "layout-n-gates.h5", _layout_gates(1000)),
            "is damaged (shape (200, 4), expected (rows, 1000))",
        ),
        "step-missing": (
            _edit(src, out / "step-missing.h5", lambda f: f.__delitem__("steps/step")),
            "steps/step is damaged (missing); the file cannot be read",
        ),
    }


# A child that runs each reader on each file in-process (one Python start-up for all) and prints one JSON line per
# call: the exit code, whether an exception escaped ws's own handling (a traceback), the seconds taken and stderr.
RUNNER = """
import contextlib, io, json, os, sys, time, traceback
import matplotlib
matplotlib.use("Agg")
from workstation.cli import main
out = os.fdopen(os.dup(1), "w")
for line in sys.stdin:
    args = json.loads(line)
    err, start, code, trace = io.StringIO(), time.perf_counter(), 0, ""
    sys.argv = ["ws", *args]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            code, trace = 1, traceback.format_exc()
    out.write(json.dumps({"args": args, "code": code, "traceback": trace, "seconds": time.perf_counter() - start,
                          "stderr": err.getvalue()}) + "\\n")
    out.flush()
"""


def reader_calls(path: Path, tmp: Path) -> list[list[str]]:
    """The four readers a user points at a file: inspect, inspect --json, stats and plot."""
    return [
        ["inspect", str(path)],
        ["inspect", "--json", str(path)],
        ["stats", str(path), "--by", "method", "--metric", "final_hm", "--include-incomplete"],
        ["plot", str(path), "--kind", "gates", "--out", str(tmp / "plot.png")],
    ]


def run_readers(calls: list[list[str]], per_call_timeout: float = 30.0) -> list[dict]:
    """Run every call in one child; a call that does not finish within ``per_call_timeout`` seconds kills the child
    and is reported with ``code`` ``"hang"``."""
    import selectors

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "120"}
    child = subprocess.Popen(
        [sys.executable, "-c", RUNNER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdin is not None and child.stdout is not None
    results: list[dict] = []
    selector = selectors.DefaultSelector()
    selector.register(child.stdout, selectors.EVENT_READ)
    try:
        for call in calls:
            child.stdin.write(json.dumps(call) + "\n")
            child.stdin.flush()
            # start-up (imports) counts against the first call only
            if not selector.select(per_call_timeout * (4 if not results else 1)):
                results.append({"args": call, "code": "hang", "traceback": "", "seconds": per_call_timeout})
                break
            line = child.stdout.readline()
            if not line:
                results.append({"args": call, "code": "died", "traceback": "", "seconds": 0.0})
                break
            results.append(json.loads(line))
    finally:
        child.kill()
        child.wait()
    return results
