"""``ws batch``: run a sweep spec (methods × seeds × interventions ...), resumable, locally or on Ray."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from workstation.commands.report import ReportFormat

if TYPE_CHECKING:
    from workstation.sweep.executors import Executor
    from workstation.sweep.spec import SweepSpec


class ExecutorName(StrEnum):
    local = "local"
    ray = "ray"


def batch(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (TOML); see docs/batch.md and examples/sweeps/.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the runs and what would run; run nothing.")] = False,
    executor: Annotated[ExecutorName, typer.Option(help="Where runs execute.")] = ExecutorName.local,
    jobs: Annotated[int, typer.Option("--jobs", "-j", help="Local executor: runs at once (one process each).")] = 1,
    address: Annotated[str | None, typer.Option(help="Ray cluster: auto or HOST:PORT (default: start one).")] = None,
    retry_failed: Annotated[bool, typer.Option(help="Re-run runs that failed before.")] = True,
    metric: Annotated[str, typer.Option(help="Metric of the closing summary (see `ws stats --help`).")] = "final_hm",
    summary: Annotated[bool, typer.Option(help="Compare the sweep by its swept axes at the end.")] = True,
    report: Annotated[
        bool, typer.Option("--report", help="Write the study's report (`ws report`) into SWEEP/report at the end.")
    ] = False,
    report_format: Annotated[ReportFormat, typer.Option(help="Format of --report.")] = ReportFormat.md,
) -> None:
    """Run every run of a sweep spec that is not yet complete, with a live table, then summarise the sweep."""
    from rich.console import Console
    from rich.markup import escape

    from recorders.format.errors import WsError
    from workstation.safe_text import clean
    from workstation.sweep.runner import execute
    from workstation.sweep.spec import load_spec

    console = Console(stderr=True)
    sweep = load_spec(spec)
    if dry_run:
        _print_plan(sweep, retry_failed)
        return
    runner = _executor(executor, jobs, address, sweep.cpus, sweep.gpus)
    try:
        outcome = execute(sweep, runner, retry_failed=retry_failed, console=console)
    except KeyboardInterrupt:
        console.print(
            escape(
                clean(f"interrupted: runs not complete are marked interrupted in {sweep.directory / 'manifest.json'};")
            )
            + " run the same command again to resume"
        )
        raise SystemExit(130) from None
    failed = [e for e in outcome.manifest.runs.values() if e.status == "failed"]
    console.print(
        escape(clean(f"sweep {sweep.directory}"))
        + f": {outcome.count('complete')} complete ({len(outcome.skipped)} already), {len(failed)} failed"
    )
    for entry in failed:
        console.print(f"  [red]failed[/] {escape(clean(f'{entry.id}: {entry.error}'))}", markup=True, highlight=False)
    if summary:
        try:
            _print_summary(sweep, metric)
        except WsError as exc:
            console.print(f"no summary: {escape(clean(exc))}")
    if report:
        import shlex
        import sys

        from workstation.commands.report import write

        try:
            for line in write(sweep.directory, None, report_format.value, "ws " + shlex.join(sys.argv[1:])):
                console.print(clean(line), markup=False, highlight=False)
        except WsError as exc:
            console.print(f"no report: {escape(clean(exc))}")
    if failed:
        raise SystemExit(1)


def _executor(name: ExecutorName, jobs: int, address: str | None, cpus: float, gpus: float) -> Executor:
    from workstation.sweep.executors import LocalExecutor, RayExecutor

    if name is ExecutorName.ray:
        return RayExecutor(None if address in (None, "") else address, cpus, gpus)
    if address:
        from recorders.format.errors import ConfigError

        raise ConfigError("--address is for --executor ray; drop it or add --executor ray")
    return LocalExecutor(jobs)


def _print_plan(sweep: SweepSpec, retry_failed: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from workstation.safe_text import clean
    from workstation.sweep.runner import plan

    manifest, todo, done = plan(sweep, retry_failed)
    will_run = {r.run_id for r in todo}
    table = Table(title=escape(clean(f"{len(sweep.runs)} runs → {sweep.directory}")), title_justify="left")
    for column in ("run", "method", "seed", "labels", "action"):
        table.add_column(column)
    for run in sweep.runs:
        entry = manifest.runs[run.run_id]
        if run.run_id in done:
            action = "skip (complete)"
        else:
            action = "run" if run.run_id in will_run else f"skip ({entry.status})"
        labels = ", ".join(f"{k}={v}" for k, v in run.labels.items())
        table.add_row(*(escape(clean(v)) for v in (run.run_id, run.method, run.config.seed, labels, action)))
    Console().print(table)


def _print_summary(sweep: SweepSpec, metric: str) -> None:
    """The `ws stats` comparison of the sweep by each swept axis (but seed and dataset) with two or more values,
    within each dataset."""
    from analyses.stats import compare
    from recorders.format.errors import WsError
    from workstation.commands.stats import print_report
    from workstation.sweep.manifest import Manifest

    manifest = Manifest(sweep.directory)
    by_dataset: dict[str, list] = {}  # runs of different datasets are never compared with each other
    for run in sweep.runs:
        if manifest.recording(run.run_id).exists():
            by_dataset.setdefault(run.config.dataset, []).append(run)
    for axis, labels in sweep.axes.items():
        if len(labels) < 2 or axis in ("seed", "dataset"):  # seeds are the unit of analysis, not a factor
            continue
        plain = all(axis not in run.labels for run in sweep.runs)
        for dataset, runs in by_dataset.items():
            values = {run.labels[axis] if axis in run.labels else getattr(run.config, axis) for run in runs}
            if len(values) < 2:  # the axis does not vary within this dataset (e.g. the axis that picks it)
                continue
            paths = [manifest.recording(run.run_id) for run in runs]
            try:
                print_report(compare(paths, axis if plain else f"tags.{axis}", metric))
            except WsError as exc:  # one dataset's gap must not hide the others' summaries
                typer.echo(f"no summary of {axis} on {dataset}: {exc}", err=True)
