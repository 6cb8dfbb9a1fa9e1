"""``ws report``: its tables are ``ws stats``'s numbers, every claim follows its documented rule on recordings built
to support and to contradict it, the HTML is well-formed with every figure present, and bad input is one line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from synthetic import write_run
from typer.testing import CliRunner

from analyses.report import METRICS, Study, load_study
from recorders.format.errors import ConfigError, RecordingError
from workstation.cli import app
from workstation.reporting import write_report

runner = CliRunner()
SEEDS = (1, 2, 3)


def arm(
    directory: Path,
    method: str,
    behaviour: str,
    hms: tuple[float, ...],
    intervention: str = "none",
    dataset: str = "world",
    **kwargs: object,
) -> None:
    """One recording per seed of one arm: final base = novel = HM, gates as ``behaviour``."""
    for seed, hm in zip(SEEDS, hms, strict=True):
        write_run(
            directory / f"{dataset}-{method}-{intervention}-s{seed}.h5",
            behaviour=behaviour,
            method=method,
            dataset=dataset,
            seed=seed,
            n_steps=300,
            final=(hm, hm),
            config={"tags": {"intervention": intervention}},
            **kwargs,
        )


LOW, HIGH = (0.70, 0.71, 0.72), (0.90, 0.91, 0.92)


@pytest.fixture(scope="module")
def settled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The settling experiment where the paper is right: gates collapse without help and with grad-equilibrium,
    gated ≈ fixed; one run still running and a sweep manifest that lists a pending run."""
    d = tmp_path_factory.mktemp("settled")
    arm(d, "coop", "none", LOW)
    arm(d, "coop-gating", "collapsed", (0.705, 0.70, 0.715))
    arm(d, "coop-gating", "collapsed", (0.70, 0.72, 0.71), intervention="grad-equilibrium")
    arm(d, "coop-gating", "collapsed", (0.71, 0.70, 0.70), intervention="gate-lr-50x")
    write_run(d / "running.h5", method="coop", seed=9, status="running", config={"tags": {"intervention": "none"}})
    pending = {"id": "coop-gating-s4-x", "status": "pending", "path": "x.h5"}
    running = {"id": "coop-s9-y", "status": "running", "path": "running.h5"}  # on disk: its own status speaks
    manifest = {"spec": "s.toml", "runs": [pending, running]}
    (d / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def adapting(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Everything the paper claims is contradicted: gates adapt, with large gradients, and beat their parent."""
    d = tmp_path_factory.mktemp("adapting")
    arm(d, "coop", "none", LOW)
    arm(d, "coop-gating", "adaptive", HIGH)
    arm(d, "coop-gating", "adaptive", HIGH, intervention="grad-equilibrium")
    return d


@pytest.fixture(scope="module")
def settled_study(settled: Path) -> Study:
    return load_study(settled, command="ws report X")


def claims(directory: Path) -> dict[str, str]:
    return {c.key: c.status for c in load_study(directory).claims}


# ---------------------------------------------------------------------------------------------- numbers
def test_tables_equal_ws_stats_json(settled_study: Study) -> None:
    study = settled_study
    assert {(t.axis, tuple(t.fixed.items())) for t in study.tables} >= {
        ("method", (("tags.intervention", "none"),)),
        ("tags.intervention", (("method", "coop-gating"),)),
    }
    for table in study.tables:
        for metric in METRICS:
            args = ["stats", *map(str, table.paths), "--by", table.axis, "--metric", metric]
            result = runner.invoke(app, [*args, "--baseline", table.baseline, "--correction", "holm", "--json"])
            assert result.exit_code == 0, result.output
            assert table.reports[metric].to_dict() == json.loads(result.stdout)


def test_collapse_table_counts_verdicts_per_arm_beside_the_fixed_baseline(settled_study: Study) -> None:
    rows = {r.label: r for r in settled_study.collapse}
    gated = rows["method=coop-gating, intervention=none"]
    assert (gated.n, gated.collapsed, gated.adaptive, gated.inconclusive) == (3, 3, 0, 0)
    assert gated.late_ratio == pytest.approx(1e-4, rel=1e-3)  # synthetic collapsed gates: 1e-4 × prompt norms
    fixed = rows["method=coop, intervention=none"]
    assert not fixed.gated and fixed.prompt_grad_late == pytest.approx(gated.prompt_grad_late, rel=0.2)


def test_collapse_table_measures_instance_gates_across_inputs(tmp_path: Path) -> None:
    arm(tmp_path, "cocoop", "none", LOW)
    arm(tmp_path, "cocoop-gating", "collapsed", LOW, gate_kind="instance")
    arm(tmp_path, "cocoop-gating", "adaptive", LOW, intervention="gate-lr-50x", gate_kind="instance")
    rows = {r.label: r for r in load_study(tmp_path).collapse}
    # synthetic instance gates: across-input std of σ 1e-6 once collapsed, 0.1 while adapting
    assert rows["method=cocoop-gating, intervention=none"].var_inputs == pytest.approx(1e-12, rel=1e-3)
    assert rows["method=cocoop-gating, intervention=gate-lr-50x"].var_inputs == pytest.approx(1e-2, rel=1e-3)
    assert math.isnan(rows["method=cocoop, intervention=none"].var_inputs)


def test_partial_sweep_reports_the_complete_runs_and_names_the_rest(settled_study: Study) -> None:
    study = settled_study
    assert len(study.runs) == 12
    assert any("running.h5: status running" in line for line in study.incomplete)
    assert any("coop-gating-s4-x: pending, no recording" in line for line in study.incomplete)
    assert len(study.incomplete) == 2


# ---------------------------------------------------------------------------------------------- claims
def test_claims_supported_when_the_gates_collapse_and_gain_nothing(settled_study: Study) -> None:
    assert {c.key: c.status for c in settled_study.claims} == {
        "near-constant": "supported",
        "gradient-gap": "supported",
        "no-gain": "supported",
        "no-rescue": "supported",
        "settling": "supported",
    }


def test_claims_contradicted_when_the_gates_adapt_and_pay(adapting: Path) -> None:
    assert claims(adapting) == {
        "near-constant": "contradicted",
        "gradient-gap": "contradicted",
        "no-gain": "contradicted",
        "no-rescue": "contradicted",
        "settling": "contradicted",
    }


def test_adaptive_but_no_better_does_not_settle_it(tmp_path: Path) -> None:
    arm(tmp_path, "coop", "none", LOW)
    arm(tmp_path, "coop-gating", "collapsed", LOW)
    arm(tmp_path, "coop-gating", "adaptive", (0.705, 0.70, 0.715), intervention="grad-equilibrium")
    got = claims(tmp_path)
    assert got["no-rescue"] == "contradicted"  # the gates came alive ...
    assert got["settling"] == "supported"  # ... but do not beat fixed prompts


def test_claims_not_tested_without_their_evidence(tmp_path: Path) -> None:
    arm(tmp_path, "coop", "none", LOW)
    arm(tmp_path, "cocoop", "none", HIGH)
    assert set(claims(tmp_path).values()) == {"not tested"}


def test_claims_are_per_dataset(tmp_path: Path) -> None:
    arm(tmp_path, "coop", "none", LOW, dataset="world")
    arm(tmp_path, "coop-gating", "collapsed", LOW, dataset="world")
    arm(tmp_path, "coop", "none", LOW, dataset="world-mixed")
    arm(tmp_path, "coop-gating", "adaptive", HIGH, dataset="world-mixed")
    by = {(c.key, c.dataset): c.status for c in load_study(tmp_path).claims}
    assert by[("near-constant", "world")] == "supported"
    assert by[("near-constant", "world-mixed")] == "contradicted"
    assert by[("no-gain", "world-mixed")] == "contradicted"


# ---------------------------------------------------------------------------------------------- rendering
class _Checker(HTMLParser):
    """Every non-void tag closed in order; collects ``img`` sources."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.images: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(f"unexpected </{tag}>")


@pytest.mark.slow
def test_html_is_well_formed_and_every_figure_exists(settled_study: Study, tmp_path: Path) -> None:
    path = write_report(settled_study, tmp_path / "out", "html")
    checker = _Checker()
    checker.feed(path.read_text(encoding="utf-8"))
    checker.close()
    assert not checker.errors and not checker.stack
    assert len(checker.images) >= 3  # gates, accuracy, one heatmap per gated arm
    for src in checker.images:
        figure = path.parent / src
        assert figure.is_file() and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
    text = path.read_text(encoding="utf-8")
    assert "ws report X" in text and "Not complete" in text and "supported" in text


@pytest.mark.slow
def test_markdown_report_from_the_command_line(settled: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", str(settled), "--out", str(tmp_path / "md")])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "md" / "report.md").read_text(encoding="utf-8")
    for figure in (part.split(")")[0] for part in text.split("](")[1:]):
        assert (tmp_path / "md" / figure).is_file()
    assert "| claim | dataset | status | evidence |" in text and "(no gates)" in text


@pytest.mark.slow
def test_ws_report_does_not_import_torch(settled: Path, tmp_path: Path) -> None:
    from test_cli_basics import _imported_after

    code, heavy = _imported_after("report", str(settled), "--out", str(tmp_path / "r"))
    assert code == 0 and heavy == set()


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_raises_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(RecordingError, match="no .h5 recordings"):
        load_study(tmp_path)
    arm(tmp_path, "coop-gating", "collapsed", LOW)
    with pytest.raises(ConfigError, match="one group"):
        load_study(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["missing", "empty", "one-group"])
def test_bad_input_on_the_command_line_exits_2(tmp_path: Path, case: str) -> None:
    target = tmp_path / "d"
    if case != "missing":
        target.mkdir()
    if case == "one-group":
        arm(target, "coop", "none", LOW)
    done = subprocess.run(
        [sys.executable, "-m", "workstation", "report", str(target)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_batch_report_writes_the_report_when_the_sweep_ends(tmp_path: Path) -> None:
    from workstation.sweep.spec import load_spec

    spec_path = tmp_path / "s.toml"
    spec_path.write_text(
        f'out = "{tmp_path / "sweeps"}"\n[base]\ndataset = "world"\n[axes]\nmethod = ["coop", "coop-gating"]\n'
        "seed = [1, 2, 3]\n",
        encoding="utf-8",
    )
    sweep = load_spec(spec_path)
    for run in sweep.runs:  # already recorded: the batch skips every run and goes straight to the report
        hm = 0.7 + 0.01 * run.config.seed
        write_run(
            sweep.directory / f"{run.run_id}.h5",
            behaviour="none" if run.method == "coop" else "collapsed",
            method=run.method,
            seed=run.config.seed,
            n_steps=200,
            final=(hm, hm),
        )
    result = runner.invoke(app, ["batch", str(spec_path), "--report", "--no-summary"])
    assert result.exit_code == 0, result.output
    assert (sweep.directory / "report" / "report.md").is_file()
