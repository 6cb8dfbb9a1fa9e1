"""The sweep manifest: ``<sweep>/manifest.json``, one entry per run, written atomically by the driver alone.

Entry fields: ``id``, ``config`` (the keys the run was given), ``labels`` (named-axis labels), ``status`` (one of
:data:`RUN_STATUSES`), ``path`` (the recording, relative to the sweep folder), ``duration`` (seconds of the last
attempt), ``attempts``, ``error`` (one line, empty unless failed or interrupted), ``final_hm``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recorders.files import atomic_write
from recorders.format import Recording
from recorders.format.errors import ConfigError, RecordingError

RUN_STATUSES = ("pending", "running", "complete", "failed", "interrupted")
MANIFEST = "manifest.json"


@dataclass
class RunEntry:
    id: str
    config: dict[str, Any]
    labels: dict[str, str] = field(default_factory=dict)
    status: str = "pending"
    path: str = ""
    duration: float = 0.0
    attempts: int = 0
    error: str = ""
    final_hm: float | None = None


@dataclass
class Manifest:
    """All runs of a sweep folder by id; :meth:`save` replaces the file atomically."""

    directory: Path
    spec: str = ""
    runs: dict[str, RunEntry] = field(default_factory=dict)

    @classmethod
    def load(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST
        if not path.exists():
            return cls(directory)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            runs = {r["id"]: RunEntry(**r) for r in raw["runs"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                f"{path}: damaged sweep manifest ({exc}); delete it (ws batch rebuilds it from the recordings)"
            ) from None
        for entry in runs.values():
            problem = _invalid(entry)
            if problem:
                raise ConfigError(
                    f"{path}: run {entry.id!r}: {problem}; fix the entry or delete the manifest "
                    "(ws batch rebuilds it from the recordings)"
                )
        return cls(directory, str(raw.get("spec", "")), runs)

    def save(self) -> None:
        payload = {"spec": self.spec, "runs": [asdict(r) for r in self.runs.values()]}
        atomic_write(self.directory / MANIFEST, lambda f: json.dump(payload, f, indent=2))

    def recording(self, run_id: str) -> Path:
        """Where a run's recording lives: one fixed file per run id, so a re-run replaces a partial file."""
        return self.directory / f"{run_id}.h5"


def _invalid(entry: RunEntry) -> str:
    """What is wrong with a manifest entry's fields (empty when nothing is)."""
    number = (int, float)
    checks = (
        ("id", isinstance(entry.id, str) and entry.id != "", "a non-empty string"),
        ("status", entry.status in RUN_STATUSES, f"one of {', '.join(RUN_STATUSES)}"),
        ("config", isinstance(entry.config, dict), "a table"),
        ("labels", isinstance(entry.labels, dict), "a table"),
        ("path", isinstance(entry.path, str), "a string"),
        ("duration", isinstance(entry.duration, number) and not isinstance(entry.duration, bool), "a number"),
        ("attempts", isinstance(entry.attempts, int) and not isinstance(entry.attempts, bool), "an integer"),
        ("error", isinstance(entry.error, str), "a string"),
        (
            "final_hm",
            entry.final_hm is None or isinstance(entry.final_hm, number) and not isinstance(entry.final_hm, bool),
            "a number or null",
        ),
    )
    for name, ok, what in checks:
        if not ok:
            return f"{name} = {getattr(entry, name)!r} must be {what}"
    return ""


def recording_state(path: Path) -> tuple[str, float | None]:
    """``(status, final_hm)`` of a recording on disk; ``("missing", None)`` when absent or unreadable, and
    ``("inconsistent", None)`` for a file that says ``complete`` but is not (see ``Recording.inconsistency``)."""
    if not path.exists():
        return "missing", None
    try:
        with Recording.open(path) as rec:
            if rec.status == "complete" and not rec.complete:
                return "inconsistent", None
            hm = rec.eval_table()["hm"]
            return rec.status, (float(hm[-1]) if len(hm) else None)
    except (RecordingError, OSError, RuntimeError, KeyError, ValueError):
        return "missing", None
