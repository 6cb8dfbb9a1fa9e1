"""The recording format round-trips every field, and any HDF5 client sees the documented structure."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
import pytest

from recorders import format as rf

DOCS = Path(__file__).resolve().parents[1] / "docs" / "recording-format.md"

LAYOUT = rf.Layout(
    loss_terms=("total", "ce"),
    groups=(
        rf.GroupSpec("ctx", "prompt", 8, 1.0, 5e-4, 0.9, 0.0, False),
        rf.GroupSpec("gates", "gate", 4, 50.0, 0.0, 0.9, 0.1, True),
    ),
    gate_sets=(
        rf.GateSetSpec(
            "ctx_gates",
            4,
            "length",
            prompt="ctx",
            decomposition=True,
            group="gates",
            init_logit=(0.0, 0.5, 1.0, 3.0),
            labels=("a", "b", "c", "d"),
        ),
        rf.GateSetSpec("inst", 3, "instance", group="gates"),
        rf.GateSetSpec("depth", 2, "depth"),
    ),
    prompts=(rf.PromptSpec("ctx", 4, "ctx"),),
    tensors=(rf.TensorSpec("ctx", (4, 2), stride=5),),
)
CONFIG = {"method": "coop-gating", "lr": 0.002, "nested": {"shots": 16, "classes": ["a", "ü"]}}


def _expected(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {p: rng.standard_normal((n, *shape)).astype(dtype) for p, (shape, dtype) in LAYOUT.step_series().items()}
    out[rf.STEP] = np.arange(100, 100 + n, dtype=np.int64)
    out[rf.EPOCH] = (np.arange(n) // 10).astype(np.int32)
    return out


def _write(path: Path, n: int = 30) -> dict[str, np.ndarray]:
    """Rows 0..9 one at a time (row 3 without its ce loss), 10..n as a block without the depth gate values."""
    expected = _expected(n)
    missing_row = rf.loss_path("ce")
    missing_block = rf.gate_path("depth", "value")
    expected[missing_row][3] = np.nan
    expected[missing_block][10:] = np.nan
    with rf.RecordingWriter(
        path, LAYOUT, config=CONFIG, method="coop-gating", seed=7, device="cpu", dataset="world", flush_every=7
    ) as w:
        for i in range(10):
            w.append_step({p: v[i] for p, v in expected.items() if not (i == 3 and p == missing_row)})
        w.append_block({p: v[10:] for p, v in expected.items() if p != missing_block})
        w.add_eval(105, 0, 0.5, 0.25)
        w.add_eval(129, 2, 0.75, 0.5, hm=0.6)
        w.add_event(101, "note", "début ✓")
        w.add_event(110, "collapse_onset", "ctx_gates")
        w.add_event(129, "eval", "")
        for k, step in enumerate((100, 105, 110)):
            w.add_tensor("ctx", step, np.full((4, 2), k, np.float32))
    return expected


def test_round_trip_every_field(tmp_path: Path) -> None:
    expected = _write(tmp_path / "r.h5")
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        assert rec.layout == LAYOUT
        assert (rec.status, rec.method, rec.seed, rec.dataset, rec.schema_version) == (
            "complete",
            "coop-gating",
            7,
            "world",
            1,
        )
        assert rec.config == CONFIG
        attrs = rec.attrs
        assert attrs["format"] == "ws-recording" and attrs["device"] == "cpu" and attrs["error"] == ""
        assert attrs["ws_version"] == rf.ws_version()
        assert datetime.fromisoformat(attrs["created"]) <= datetime.fromisoformat(attrs["finished"])
        assert rec.n_steps == 30
        for path, values in expected.items():
            got = rec.read(path)
            assert got.dtype == LAYOUT.step_series()[path][1], path
            np.testing.assert_array_equal(got, values, err_msg=path)
        np.testing.assert_array_equal(rec.read(rf.STEP, 5, 20, 3), expected[rf.STEP][5:20:3])
        np.testing.assert_array_equal(
            rec.row(rf.gate_path("inst", "value_std"), -1), expected[rf.gate_path("inst", "value_std")][-1]
        )
        assert rec.row_of_step(112) == 12 and rec.row_of_step(0) == 0 and rec.row_of_step(10**6) == 29
        ev = rec.eval_table()
        np.testing.assert_array_equal(ev["step"], [105, 129])
        np.testing.assert_array_equal(ev["epoch"], [0, 2])
        np.testing.assert_allclose(ev["hm"], [2 * 0.5 * 0.25 / 0.75, 0.6])
        np.testing.assert_array_equal(ev["novel_acc"], [0.25, 0.5])
        assert [(e.step, e.kind, e.message) for e in rec.events()] == [
            (101, "note", "début ✓"),
            (110, "collapse_onset", "ctx_gates"),
            (129, "eval", ""),
        ]
        steps, grads = rec.tensor("ctx")
        np.testing.assert_array_equal(steps, [100, 105, 110])
        np.testing.assert_array_equal(grads[:], np.arange(3)[:, None, None] * np.ones((3, 4, 2)))
        summary = rec.summary()
        assert json.loads(json.dumps(summary))["last_eval"]["step"] == 129
    with h5py.File(tmp_path / "r.h5", "r") as f:  # the layout attributes, as any HDF5 client sees them
        assert dict(f["grads/gates"].attrs) == {
            "role": "gate",
            "n_params": 4,
            "lr_scale": 50.0,
            "weight_decay": 0.0,
            "momentum": 0.9,
            "dampening": 0.1,
            "nesterov": True,
        }
        g = f["gates/ctx_gates"].attrs
        assert (g["kind"], g["n_gates"], g["prompt"], g["group"]) == ("length", 4, "ctx", "gates")
        np.testing.assert_array_equal(g["init_logit"], [0.0, 0.5, 1.0, 3.0])
        assert json.loads(g["labels"]) == ["a", "b", "c", "d"]
        assert dict(f["prompts/ctx"].attrs) == {"n_tokens": 4, "group": "ctx"}
        assert f["tensors/ctx"].attrs["stride"] == 5
        assert f[rf.gate_path("ctx_gates", "value")].chunks[0] >= 256  # chunked along steps


def test_failed_run_records_its_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with rf.RecordingWriter(tmp_path / "r.h5", LAYOUT, config={}, method="m", seed=0, device="cpu") as w:
            w.append_block({p: v[:3] for p, v in _expected(3).items()})
            raise RuntimeError("boom\nsecond line")
    with rf.Recording.open(tmp_path / "r.h5") as rec:
        assert (rec.status, rec.attrs["error"], rec.n_steps) == ("failed", "RuntimeError: boom", 3)


def test_writer_rejects_rows_that_do_not_fit_the_layout(tmp_path: Path) -> None:
    with rf.RecordingWriter(tmp_path / "r.h5", LAYOUT, config={}, method="m", seed=0, device="cpu") as w:
        with pytest.raises(KeyError, match="not declared"):
            w.append_step({rf.STEP: 0, rf.EPOCH: 0, "gates/nope/value": 1.0})
        with pytest.raises(KeyError, match="integer series"):
            w.append_step({rf.STEP: 0})  # epoch has no missing value
        with pytest.raises(ValueError, match="row shape"):
            w.append_step({rf.STEP: 0, rf.EPOCH: 0, rf.gate_path("inst", "value"): np.zeros(4)})
    with pytest.raises(ValueError, match="HDF5 path"):
        rf.GroupSpec("a/b", "gate", 1)
    with pytest.raises(ValueError, match="duplicate"):
        rf.Layout(prompts=(rf.PromptSpec("p", 1), rf.PromptSpec("p", 2)))


def _documented_patterns() -> list[re.Pattern[str]]:
    """Every dataset path the docs name (``/a/<name>/b``), as a regex with ``<...>`` matching one component."""
    paths = set(re.findall(r"`(/[a-z_]+(?:/[^`\s]+)*)`", DOCS.read_text()))
    return [
        re.compile("^" + re.sub(r"<[^>]+>", "[^/]+", re.escape(p).replace(r"\<", "<").replace(r"\>", ">")) + "$")
        for p in sorted(paths)
    ]


@pytest.mark.skipif(shutil.which("h5ls") is None, reason="h5ls (hdf5-tools) is not installed")
def test_h5ls_lists_the_documented_structure(tmp_path: Path) -> None:
    _write(tmp_path / "r.h5")
    # optional datasets (schema-1.1 evaluations, the ratio factors, per-term gradients, instance-gate movement)
    # exist only when declared: a second file declares them all
    instance = rf.GateSetSpec(
        "inst",
        2,
        "instance",
        group="gates",
        factors=True,
        vector_dim=3,
        terms=("entropy",),
        init_bias=(0.0, 0.0),
        init_weight_norm=(1.0, 1.0),
    )
    layout = rf.Layout(
        gate_sets=(instance,), evaluation=rf.EvalSpec(2, 1, rf.COUNTERFACTUALS, instance_gates=("inst",))
    )
    with rf.RecordingWriter(tmp_path / "e.h5", layout, config={}, method="t", seed=0, device="cpu") as w:
        correct = {model: np.array([1, 0, 1], bool) for model in layout.evaluation.models}
        stats = {"inst": {k: np.zeros(2, np.float32) for k in rf.EVAL_GATE_STATS}}
        w.add_eval(0, 0, 0.5, 1.0, val_acc=0.5, correct=correct, gate_stats=stats)
    objects = {}
    for name in ("r.h5", "e.h5"):
        listing = subprocess.run(["h5ls", "-r", str(tmp_path / name)], capture_output=True, text=True, check=True)
        objects.update(dict(line.split()[:2] for line in listing.stdout.splitlines()))  # path → Group or Dataset
    datasets = [path for path, kind in objects.items() if kind == "Dataset"]
    patterns = _documented_patterns()
    assert len(patterns) >= 20
    undocumented = [d for d in datasets if not any(p.match(d) for p in patterns)]
    assert not undocumented, f"datasets missing from docs/recording-format.md: {undocumented}"
    unused = [p.pattern for p in patterns if not any(p.match(o) for o in objects)]
    assert not unused, f"documented paths this recording lacks: {unused}"
    assert "/gates/ctx_gates/cosine" in datasets and "/tensors/ctx/grad" in datasets
