"""Statistics across seeds: pick a grouping key, a metric and a baseline; the analyses compare the groups.

The numbers are :func:`analyses.stats.compare`'s (the same as ``ws stats``); this screen only lays them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Checkbox, DataTable, Footer, Select, Static

from recorders.format.errors import WsError
from workstation.app.widgets.plot import fmt
from workstation.safe_text import clean

ALL_PAIRS = "(every pair)"
GROUP_COLUMNS = ("group", "n", "seeds", "per-seed values", "mean ± std", "95% t-interval", "IQM")
ROW_COLUMNS = ("comparison", "diff", "Welch p", "perm p", "MWU p", "P(improve) [95%]", "Hedges g", "adj. p")


def group_cells(g: Any) -> tuple[str, ...]:
    """One row of the groups table from an ``analyses.stats.GroupSummary``."""
    return (
        clean(g.name),
        str(g.n),
        ", ".join(map(str, g.seeds)),
        ", ".join(fmt(v) for v in g.values),
        f"{fmt(g.mean)} ± {fmt(g.std)}",
        f"[{fmt(g.ci_low)}, {fmt(g.ci_high)}]",
        fmt(g.iqm),
    )


def row_cells(r: Any) -> tuple[str, ...]:
    """One row of the comparisons table from an ``analyses.stats.ComparisonRow`` (paired p in the Welch column
    when the comparison is paired)."""
    welch = f"{fmt(r.paired_p)} (paired t)" if r.paired else fmt(r.welch_p)
    return (
        clean(f"{r.a} vs {r.b}"),
        fmt(r.mean_diff),
        welch,
        fmt(r.perm_p),
        fmt(r.mwu_p),
        f"{fmt(r.prob_improvement)} [{fmt(r.pi_low)}, {fmt(r.pi_high)}]",
        fmt(r.hedges_g),
        f"{fmt(r.p_adjusted)} ({r.correction})",
    )


class StatsScreen(Screen[None]):
    """Grouping key, metric and baseline selectors over ``paths``; results in two tables and the warnings."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__()
        self.paths = paths
        self.report: Any = None
        self._runs: Any = None

    def compose(self) -> ComposeResult:
        from analyses.grouping import metric_names

        with Horizontal(id="stats-controls"):
            yield Select[str]([], prompt="group by", id="by")
            yield Select[str]([(m, m) for m in metric_names()], value="final_hm", allow_blank=False, id="metric")
            yield Select[str]([], prompt="baseline", id="baseline")
            yield Checkbox("paired", id="paired")
        yield DataTable(id="stats-groups", zebra_stripes=True, cursor_type="row")
        yield DataTable(id="stats-table", zebra_stripes=True, cursor_type="row")
        yield Static(id="stats-warnings")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#stats-groups", DataTable).add_columns(*GROUP_COLUMNS)
        self.query_one("#stats-table", DataTable).add_columns(*ROW_COLUMNS)
        self._load_keys()

    @work(thread=True, exclusive=True, exit_on_error=False, group="stats")
    def _load_keys(self) -> None:
        from analyses.grouping import available_keys, load_runs

        try:
            runs = load_runs(self.paths, "final_hm", self._skipped)
        except WsError as exc:
            self.app.call_from_thread(self._failed, clean(exc))
            return
        self.app.call_from_thread(self._keys_loaded, runs, available_keys(runs))

    def _keys_loaded(self, runs: Any, keys: list[str]) -> None:
        self._runs = runs
        by = self.query_one("#by", Select)
        by.set_options([(k, k) for k in keys])
        by.value = "variant" if "variant" in keys else "method"

    def _baselines(self, key: str) -> None:
        from analyses.grouping import group_runs

        try:
            groups, _ = group_runs(self._runs, key)
        except WsError:
            groups = {}
        baseline = self.query_one("#baseline", Select)
        baseline.set_options([(ALL_PAIRS, ALL_PAIRS)] + [(g, g) for g in groups])
        baseline.value = ALL_PAIRS

    def on_select_changed(self, message: Select.Changed) -> None:
        if message.select.id == "by" and isinstance(message.value, str):
            self._baselines(message.value)
        self.recompute()

    def on_checkbox_changed(self) -> None:
        self.recompute()

    def recompute(self) -> None:
        """Run the comparison for the current choices in a background worker."""
        by, metric = self.query_one("#by", Select).value, self.query_one("#metric", Select).value
        baseline = self.query_one("#baseline", Select).value
        if not isinstance(by, str) or not isinstance(metric, str):
            return
        self.query_one("#stats-table", DataTable).loading = True
        self._compare(
            by,
            metric,
            baseline if isinstance(baseline, str) and baseline != ALL_PAIRS else None,
            self.query_one("#paired", Checkbox).value,
        )

    @work(thread=True, exclusive=True, exit_on_error=False, group="stats")
    def _compare(self, by: str, metric: str, baseline: str | None, paired: bool) -> None:
        from analyses.stats import compare

        try:
            report = compare(self.paths, by, metric, baseline=baseline, paired=paired, skip_damaged=self._skipped)
        except WsError as exc:
            self.app.call_from_thread(self._failed, clean(exc))
            return
        self.app.call_from_thread(self._show, report)

    def _skipped(self, exc: Exception) -> None:
        """A damaged recording is left out of the statistics (called from the worker thread)."""
        self.app.call_from_thread(self.notify, f"skipped {exc}", title="unreadable recording", severity="warning")

    def _failed(self, message: str) -> None:
        self.report = None
        for table in self.query(DataTable).results(DataTable):
            table.loading = False
            table.clear()
        self.query_one("#stats-warnings", Static).update(message)
        self.notify(message, title="stats", severity="warning")

    def _show(self, report: Any) -> None:
        self.report = report
        groups, rows = self.query_one("#stats-groups", DataTable), self.query_one("#stats-table", DataTable)
        groups.clear()
        rows.clear()
        rows.loading = False
        groups.add_rows(group_cells(g) for g in report.groups.values())
        rows.add_rows(row_cells(r) for r in report.rows)
        notes = report.warnings + [f"excluded {e}" for e in report.excluded]
        self.query_one("#stats-warnings", Static).update("\n".join(f"⚠ {clean(w)}" for w in notes) or "")
