"""``ws report``: the study under a folder as one report (numbers: ``analyses.report``; rendering:
``workstation.reporting``)."""

from __future__ import annotations

import shlex
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class ReportFormat(StrEnum):
    md = "md"
    html = "html"


def report(
    directory: Annotated[Path, typer.Argument(help="A sweep folder or any folder of recordings (*.h5, recursively).")],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the report and its figures (default: DIR/report).")
    ] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="md (Markdown) or html.")] = ReportFormat.md,
) -> None:
    """Write the study's report: comparisons per axis, the collapse table, figures, the paper's claims, provenance."""
    for line in write(directory, out, fmt.value, "ws " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "ws report"):
        typer.echo(line)


def write(directory: Path, out: Path | None, fmt: str, command: str) -> list[str]:
    """Compute and write the report of ``directory`` into ``out`` (default ``directory/report``); return lines
    for the terminal: each claim's status per dataset, then the report's path."""
    from analyses.report import load_study
    from workstation.reporting import write_report

    study = load_study(directory, command=command)
    path = write_report(study, out if out is not None else Path(directory) / "report", fmt)
    lines = [f"{c.dataset} · {c.key}: {c.status}" for c in study.claims]
    if study.incomplete:
        lines.append(f"{len(study.incomplete)} run(s) not complete: left out (listed in the report)")
    return [*lines, f"report: {path}"]
