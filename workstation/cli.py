"""The ``ws`` command line. Thin: each command lives in ``workstation/commands/`` and imports heavy modules
(torch, transformers, textual) inside its body, so ``ws --help``, ``ws inspect`` and ``ws stats`` stay light.

Every :class:`~recorders.format.errors.WsError` becomes one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys

import typer

from recorders.format.errors import WsError
from workstation.commands import backbone, batch, inspect, plot, record, report, stats, view
from workstation.safe_text import clean

app = typer.Typer(
    name="ws",
    help="ws, the collapsed-gating workstation: record adaptive prompt learning on frozen CLIP, "
    "replay it, and test whether the gates adapted or collapsed.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.command("record")(record.record)
app.command("inspect")(inspect.inspect)
app.command("stats")(stats.stats)
app.command("plot")(plot.plot)
app.command("view")(view.view)
app.command("batch")(batch.batch)
app.command("report")(report.report)
app.add_typer(backbone.app, name="backbone")


def main() -> None:
    """Console entry point: run the app, turning user errors into one line and exit code 2."""
    try:
        app()
    except WsError as exc:
        print(f"ws: error: {clean(exc)}", file=sys.stderr)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        print("ws: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
