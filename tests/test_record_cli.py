"""``ws record`` from the command line: a real run, --dry-run counts, and one-line errors that leave no
complete recording behind."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_methods import expected_counts
from typer.testing import CliRunner

from recorders.format import Recording
from recorders.format.errors import ConfigError
from workstation.cli import app


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    from recorders.clip.pretrain import random_checkpoint

    return str(random_checkpoint(tmp_path_factory.mktemp("tiny-clip"), seed=0))


def invoke(*args: str):
    return CliRunner().invoke(app, ["record", *args])


def test_record_runs_and_prints_path_accuracies_and_gates(checkpoint, tmp_path, monkeypatch):
    from dataclasses import replace

    from recorders.train import loop as training

    load_task = training.load_task

    def small_task(cfg, cache_dir=None):  # the world task with 6 test images per half, to keep the test fast
        task = load_task(cfg, cache_dir)
        return replace(task, test_base=task.test_base[:6], test_novel=task.test_novel[:6])

    monkeypatch.setattr(training, "load_task", small_task)
    monkeypatch.setenv("WS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run.h5"
    result = invoke(
        "--backbone",
        checkpoint,
        "--shots",
        "1",
        "--epochs",
        "2",
        "--batch-size",
        "9",
        "--seed",
        "0",
        "--device",
        "cpu",
        "--out",
        str(out),
        "--set",
        "views=1",
        "--gate-init",
        "biased:1",
    )
    assert result.exit_code == 0, result.output
    assert f"recording: {out}" in result.output.replace("\n", "")
    assert "before:" in result.output and "after:" in result.output and "HM" in result.output
    assert "gates: gate σ" in result.output
    with Recording.open(out) as rec:
        assert rec.status == "complete" and rec.method == "coop-gating" and rec.seed == 0
        assert rec.n_steps == 4 and rec.config["gate_init"] == "biased:1"
        assert rec.gate_sets["gate"].init_logit == (1.0, 1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    ("method", "variant"),
    [("coop-gating", "standard"), ("adaptive-bimaple", "standard"), ("adaptive-bimaple", "param-matched")],
)
def test_dry_run_prints_hand_counted_parameters(checkpoint, tmp_path, method, variant):
    result = invoke(
        "--backbone",
        checkpoint,
        "--device",
        "cpu",
        "--method",
        method,
        "--variant",
        variant,
        "--out",
        str(tmp_path / "x.h5"),
        "--dry-run",
    )
    assert result.exit_code == 0, result.output
    from transformers import CLIPConfig

    config = CLIPConfig.from_pretrained(checkpoint)
    expected = expected_counts(config)[method]
    assert f"{expected:,}" in result.output
    gates = 4 if method == "coop-gating" else 3 * min(9, config.text_config.num_hidden_layers)  # J·n + J, n = 2
    header = next(line for line in result.output.splitlines() if "param-matched" in line and "always-frozen" in line)
    assert header.split() == ["┃", "gated", "┃", "param-matched", "┃", "always-frozen", "┃"]
    row = result.output.splitlines()[result.output.splitlines().index(header) + 2]
    assert [int(x.replace(",", "")) for x in row.strip("│ ").split("│")] == [expected, expected, expected - gates]
    assert not (tmp_path / "x.h5").exists()


BAD = [
    (["--method", "coopp"], "unknown method 'coopp'; did you mean coop"),
    (["--variant", "frozen"], "unknown variant 'frozen'"),
    (["--gate-init", "gaussian"], "gate init 'gaussian' is not valid"),
    (["--method", "coop", "--variant", "always-frozen"], "needs a gated method"),
    (["--method", "maple", "--grad-equilibrium"], "needs a gated method"),
    (["--set", "learning_rate=0.1"], "unknown config key 'learning_rate'"),
    (["--set", "gate_lr_scal=5"], "did you mean gate_lr_scale"),
    (["--on-nan", "ignore"], "unknown on_nan 'ignore'"),
    (["--epochs", "0"], "epochs = 0 must be at least 1"),
    (["--seed", "4294967296"], "seed = 4294967296 must be in [0, 4294967295]"),
    (["--set", "dataset=nope"], "unknown dataset 'nope' (choose from world, world-mixed, imagenet"),
]


@pytest.mark.parametrize(("args", "message"), BAD)
def test_bad_input_is_a_config_error_and_writes_nothing(tmp_path, args, message):
    out = tmp_path / "bad.h5"
    result = invoke(*args, "--out", str(out))
    assert isinstance(result.exception, ConfigError)
    assert message in str(result.exception) and "\n" not in str(result.exception)
    assert not out.exists()


def test_bad_config_file_key_lists_near_matches(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('method = "coop"\nbach_size = 4\n')
    result = invoke("--config", str(config), "--out", str(tmp_path / "bad.h5"))
    assert isinstance(result.exception, ConfigError)
    assert "unknown config key 'bach_size'; did you mean batch_size" in str(result.exception)


def test_console_prints_one_line_and_exits_2(tmp_path):
    out = tmp_path / "bad.h5"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "workstation",
            "record",
            "--variant",
            "always-frozen",
            "--method",
            "cocoop",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "needs a gated method" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


def test_examples_are_valid_configs():
    from recorders.train.config import build_config

    examples = sorted(Path(__file__).parent.parent.joinpath("examples").glob("*.toml"))
    assert examples
    for path in examples:
        build_config(config_file=path)


def test_demo_records_a_complete_demo_recording(tmp_path):
    out = tmp_path / "demo.h5"
    result = CliRunner().invoke(app, ["record", "--demo", "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.replace("\n", "")
    with Recording.open(out) as rec:
        assert (rec.status, rec.method, rec.seed) == ("complete", "demo", 3)
        assert rec.n_steps == 300 and set(rec.gate_sets) and len(rec.eval_table()["hm"]) > 0
