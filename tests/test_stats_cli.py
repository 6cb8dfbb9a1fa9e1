"""``ws stats`` end to end: output formats and one-line errors with exit code 2 for bad input."""

from __future__ import annotations

import csv
import io
import json

import pytest
from synthetic import write_group, write_run
from typer.testing import CliRunner

from recorders.format.errors import WsError
from workstation.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    write_group(d, "standard", [1, 2, 3], [0.70, 0.72, 0.71], behaviour="adaptive", n_steps=200)
    write_group(d, "frozen", [1, 2, 3], [0.66, 0.69, 0.65], n_steps=200)
    return d


def _stats(*args: str):
    return runner.invoke(app, ["stats", *map(str, args)])


def test_default_table_and_machine_formats(runs):
    table = _stats(runs, "--by", "variant", "--metric", "final_hm", "--baseline", "standard")
    assert table.exit_code == 0, table.output
    assert "frozen" in table.output and "cannot give p < 0.05" in table.output
    data = json.loads(_stats(runs, "--by", "variant", "--metric", "final_hm", "--json").stdout)
    assert data["groups"]["frozen"]["values"] == pytest.approx([0.66, 0.69, 0.65])
    rows = list(
        csv.DictReader(
            io.StringIO(
                _stats(runs, "--by", "variant", "--metric", "best_hm", "--baseline", "standard", "--csv").stdout
            )
        )
    )
    assert [(r["a"], r["b"]) for r in rows] == [("frozen", "standard")]
    md = _stats(runs, "--by", "variant", "--metric", "late_ratio", "--markdown", "--paired").stdout
    assert "| frozen vs standard |" in md


def test_ws_stats_runs_without_torch_in_a_subprocess(runs):
    import subprocess
    import sys

    code = (
        f"import sys; from workstation.cli import app; sys.argv=['ws','stats',{str(runs)!r},'--by',"
        "'variant','--metric','final_hm','--json']\ntry: app()\nexcept SystemExit: pass\n"
        "assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--by", "nope", "--metric", "final_hm"], "keys that exist: method, dataset, seed, status"),
        (["--by", "variant", "--metric", "final_xx"], "valid metrics: final_hm"),
        (["--by", "variant", "--metric", "final_hm", "--baseline", "zzz"], "groups: frozen, standard"),
        (["--by", "shots", "--metric", "final_hm"], "two or more runs"),
        (["--by", "variant", "--metric", "final_hm", "--json", "--csv"], "choose one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(runs, args, needle):
    result = _stats(runs, *args)  # main() turns a WsError into one line and exit 2 (tested below)
    assert isinstance(result.exception, WsError)
    assert needle in str(result.exception) and "\n" not in str(result.exception)


def test_mixed_datasets_are_refused(tmp_path):
    write_group(tmp_path, "a", [1, 2], [0.7, 0.71], behaviour="none", n_steps=50)
    write_group(tmp_path, "b", [1, 2], [0.6, 0.61], behaviour="none", n_steps=50, dataset="eurosat")
    result = _stats(tmp_path, "--by", "variant", "--metric", "final_hm")
    assert "mix datasets" in str(result.exception)


def test_incomplete_runs_are_excluded_unless_asked(tmp_path):
    write_group(tmp_path, "a", [1, 2], [0.7, 0.71], behaviour="none", n_steps=50)
    write_group(tmp_path, "b", [1, 2], [0.6, 0.61], behaviour="none", n_steps=50)
    write_run(tmp_path / "b-s3.h5", behaviour="none", n_steps=50, seed=3, config={"variant": "b"}, status="failed")
    write_run(tmp_path / "b-s4.h5", behaviour="none", n_steps=50, seed=4, config={"variant": "b"}, status="running")
    plain = json.loads(_stats(tmp_path, "--by", "variant", "--metric", "final_hm", "--json").stdout)
    assert plain["groups"]["b"]["n"] == 2 and len(plain["excluded"]) == 2
    assert "--include-incomplete" in plain["excluded"][0]
    both = json.loads(
        _stats(tmp_path, "--by", "variant", "--metric", "final_hm", "--json", "--include-incomplete").stdout
    )
    assert both["groups"]["b"]["seeds"] == [1, 2, 3, 4]
    assert any("included 2 incomplete" in w for w in both["warnings"])


def test_cli_entry_point_prints_one_line_and_exits_2(tmp_path):
    import subprocess
    import sys

    write_group(tmp_path, "a", [1, 2], [0.7, 0.71], behaviour="none", n_steps=50)
    done = subprocess.run(
        [sys.executable, "-m", "workstation", "stats", str(tmp_path), "--by", "variant", "--metric", "final_hm"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "two or more runs" in done.stderr
