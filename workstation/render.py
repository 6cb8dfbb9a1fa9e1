"""Rich rendering helpers for the headless commands."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from workstation.safe_text import clean

console = Console()


def config_summary(config: dict[str, Any], limit: int = 16) -> str:
    """``key=value`` pairs of a run config, nested keys joined with ``.``, at most ``limit`` shown."""
    pairs: list[str] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}{key}.", item)
        else:
            pairs.append(clean(f"{prefix[:-1]}={value}"))

    walk("", config)
    more = f" … (+{len(pairs) - limit} more; --json shows all)" if len(pairs) > limit else ""
    return ", ".join(pairs[:limit]) + more if pairs else "-"


def print_summary(s: dict[str, Any]) -> None:
    """Print a recording summary (as returned by ``Recording.summary``) as a rich table (every value passed
    through :func:`~workstation.safe_text.clean`: a recording's strings never reach the terminal raw)."""
    table = Table(title=escape(clean(s["path"])), show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    ev = s["last_eval"]
    rows = [
        ("format", f"{s['format']} v{s['schema_version']} ({s['ws_version']})"),
        ("status", s["status"] + (f" — {s['error']}" if s["error"] else "")),
        ("method / dataset / seed", f"{s['method']} / {s['dataset'] or '-'} / {s['seed']}"),
        ("device, created", f"{s['device']}, {s['created']}"),
        (
            "rows (steps)",
            f"{s['rows']}" + (f"  (step {s['step_range'][0]}…{s['step_range'][1]})" if s["step_range"] else ""),
        ),
        ("loss terms", ", ".join(s["loss_terms"])),
        ("groups", ", ".join(f"{k} [{v['role']}, {v['n_params']:,} params]" for k, v in s["groups"].items()) or "-"),
        ("gate sets", ", ".join(f"{k} [{v['kind']} × {v['n_gates']}]" for k, v in s["gate_sets"].items()) or "-"),
        ("prompts", ", ".join(f"{k} [{v} tokens]" for k, v in s["prompts"].items()) or "-"),
        ("config", config_summary(s["config"])),
        (
            "last eval",
            "-"
            if ev is None
            else f"step {ev['step']}: base {ev['base_acc']:.4f}  novel {ev['novel_acc']:.4f}  HM {ev['hm']:.4f}",
        ),
        ("events", str(s["events"])),
    ]
    for key, value in rows:
        table.add_row(key, escape(clean(value)))
    console.print(table)
