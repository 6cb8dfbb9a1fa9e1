"""Sweep specs: a TOML file that crosses `ws record` configs into a list of runs.

```toml
name = "world-methods"            # sweep folder name (default: the spec file's stem)
out = "recordings/sweeps"         # parent folder of the sweep folder (default: recordings/sweeps)

[base]                            # any `ws record` config key (docs/methods.md), shared by every run
dataset = "world"
epochs = 2

[axes]                            # crossed: every combination is a run
method = ["coop", "coop-gating"]  # a plain axis: values of one config key
seed = [1, 2, 3]

[axes.intervention]               # a named axis: each label is a set of config keys
none = {}
lr50 = { gate_lr_scale = 50.0 }

[[exclude]]                       # drop the combinations whose axis labels match every key of an entry
method = "coop"                   # (e.g. gate interventions on a method without gates)
intervention = "lr50"

[[runs]]                          # explicit extra runs: base + these keys (+ optional `tags`)
method = "coop"
seed = 7

[resources]                       # asked per run: Ray schedules with them, the local executor shares threads
cpus = 1
gpus = 0
```

Each run's config is validated with :func:`recorders.train.config.build_config` before anything runs. A run's id is
derived from its full resolved config (the ``out`` and ``device`` keys excluded), so editing the spec adds runs
instead of overwriting old ones. Named-axis labels are stored in the run's ``tags`` (``tags.intervention``), which
``ws stats --by tags.intervention`` groups by.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorders.format import RECORDINGS_DIR
from recorders.format.errors import ConfigError
from recorders.train.config import FIELDS, Config, build_config, read_toml, suggest

SPEC_KEYS = ("name", "out", "base", "axes", "exclude", "runs", "resources")
RESOURCE_KEYS = ("cpus", "gpus")
DEFAULT_OUT = RECORDINGS_DIR / "sweeps"
_ID_EXCLUDED = ("out", "device")


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: its id, validated config keys (as given to ``ws record``) and axis labels."""

    run_id: str
    overrides: dict[str, Any]
    labels: dict[str, str]
    config: Config = field(repr=False, compare=False)

    @property
    def method(self) -> str:
        return self.config.method


@dataclass(frozen=True)
class SweepSpec:
    """A parsed sweep: where it writes, what each run asks for, and the runs in order."""

    path: Path
    name: str
    directory: Path
    axes: dict[str, list[str]]  # axis name → labels, in spec order
    runs: list[PlannedRun]
    cpus: float = 1.0
    gpus: float = 0.0


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a sweep spec; any problem raises :class:`ConfigError` with one line."""
    p = Path(path)
    return parse_spec(read_toml(p, "sweep spec", "spec"), p)


def parse_spec(raw: Mapping[str, Any], path: Path) -> SweepSpec:
    """Validate a spec already read from TOML (``path`` names it in messages and resolves relative paths)."""
    _known(raw, SPEC_KEYS, f"{path}: unknown spec key", "valid keys")
    base = _table(raw, "base", path)
    resources = _table(raw, "resources", path)
    _known(resources, RESOURCE_KEYS, f"{path}: unknown [resources] key", "valid keys")
    axes = _axes(_table(raw, "axes", path), path)
    extra = raw.get("runs", [])
    if not isinstance(extra, list) or not all(isinstance(r, dict) for r in extra):
        raise ConfigError(f"{path}: [[runs]] must be a list of tables of config keys")
    exclude = _exclusions(raw.get("exclude", []), axes, path)
    planned: dict[str, PlannedRun] = {}
    combos = itertools.product(*axes.values()) if axes else [()]
    candidates = []
    for combo in combos:
        chosen = dict(zip(axes, combo, strict=True))
        if any(all(chosen[axis] == label for axis, label in entry.items()) for entry in exclude):
            continue
        overrides, labels = dict(base), {}
        for (axis, values), label in zip(axes.items(), combo, strict=True):
            overrides.update(values[label])
            if not _is_plain(axis, values):
                labels[axis] = label
        candidates.append((overrides, labels))
    for run in extra:
        tags = run.get("tags", {})
        if not isinstance(tags, dict):
            raise ConfigError(f'{path}: [[runs]] tags = {tags!r} must be a table, e.g. tags = {{ group = "a" }}')
        candidates.append(({**base, **{k: v for k, v in run.items() if k != "tags"}}, dict(tags)))
    for overrides, labels in candidates:
        run = _plan(overrides, labels, path)
        planned.setdefault(run.run_id, run)
    if not planned:
        raise ConfigError(f"{path}: the spec makes no runs; add [axes] values or [[runs]]")
    name = _name(raw.get("name") or path.stem, path)
    if "out" in raw and not (isinstance(raw["out"], str) and raw["out"]):
        raise ConfigError(f"{path}: out = {raw['out']!r} must be a folder path (a non-empty string)")
    out = Path(raw["out"]) if "out" in raw else DEFAULT_OUT
    return SweepSpec(
        path=path,
        name=name,
        directory=out / name,
        axes={axis: list(values) for axis, values in axes.items()},
        runs=list(planned.values()),
        cpus=_positive(resources.get("cpus", 1), "cpus", path),
        gpus=_positive(resources.get("gpus", 0), "gpus", path, allow_zero=True),
    )


def _name(value: Any, path: Path) -> str:
    """The sweep's folder name: one plain path component, so the sweep stays inside ``out``."""
    name = value if isinstance(value, str) else None
    if not name or name in (".", "..") or "/" in name or "\\" in name or name.startswith("."):
        raise ConfigError(
            f"{path}: name = {value!r} must be a plain folder name (no '/', no '..', not hidden); "
            "the sweep is written to <out>/<name>"
        )
    return name


def run_id(config: Config) -> str:
    """``<method>-s<seed>-<hash>``: the hash covers every config key except ``out`` and ``device``."""
    payload = {k: v for k, v in config.to_dict().items() if k not in _ID_EXCLUDED}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{config.method}-s{config.seed}-{digest}"


def _plan(overrides: dict[str, Any], labels: dict[str, str], path: Path) -> PlannedRun:
    keys = {k.replace("-", "_"): v for k, v in overrides.items()}
    for key in keys:
        if key not in FIELDS:
            raise ConfigError(
                f"{path}: unknown config key {key!r}{suggest(key, FIELDS)} (valid keys: {', '.join(FIELDS)})"
            )
    if "out" in keys:
        raise ConfigError(f"{path}: `out` is set by the sweep for each run; remove it from the spec")
    if not isinstance(keys.get("tags", {}), dict):
        raise ConfigError(f'{path}: tags = {keys["tags"]!r} must be a table of labels, e.g. tags = {{ group = "a" }}')
    if labels:
        keys["tags"] = {**keys.get("tags", {}), **labels}
    try:
        config = build_config(keys.items())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return PlannedRun(run_id=run_id(config), overrides=keys, labels=labels, config=config)


def _axes(raw: dict[str, Any], path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Each axis as ``label → config keys``; a plain axis ``seed = [1, 2]`` becomes ``{"1": {"seed": 1}, ...}``."""
    axes: dict[str, dict[str, dict[str, Any]]] = {}
    for axis, values in raw.items():
        if isinstance(values, list):
            if axis.replace("-", "_") not in FIELDS:
                raise ConfigError(
                    f"{path}: axis {axis!r} is not a config key{suggest(axis, FIELDS)}; a plain "
                    "axis lists values of one key, a named axis is a table of labelled key sets"
                )
            if not values:
                raise ConfigError(f"{path}: axis {axis!r} is empty; give it at least one value")
            axes[axis] = {_label(v): {axis: v} for v in values}
        elif isinstance(values, dict):
            if not values:
                raise ConfigError(f"{path}: axis {axis!r} is empty; give it at least one labelled set")
            bad = [label for label, keys in values.items() if not isinstance(keys, dict)]
            if bad:
                raise ConfigError(
                    f"{path}: named axis {axis!r}: {bad[0]!r} must be a table of config keys, "
                    "e.g. lr50 = { gate_lr_scale = 50.0 }"
                )
            axes[axis] = {str(label): dict(keys) for label, keys in values.items()}
        else:
            raise ConfigError(f"{path}: axis {axis!r} must be a list of values or a table of labelled key sets")
    return axes


def _exclusions(raw: Any, axes: Mapping[str, Mapping[str, Any]], path: Path) -> list[dict[str, str]]:
    """``[[exclude]]`` entries as ``{axis: label}``; each must name existing axes and labels."""
    if not isinstance(raw, list) or not all(isinstance(e, dict) and e for e in raw):
        raise ConfigError(f"{path}: [[exclude]] must be a list of non-empty tables of axis = label")
    out = []
    for entry in raw:
        labels = {}
        for axis, value in entry.items():
            if axis not in axes:
                raise ConfigError(f"{path}: [[exclude]] names {axis!r}, not an axis{suggest(axis, axes)}")
            label = _label(value)
            if label not in axes[axis]:
                raise ConfigError(
                    f"{path}: [[exclude]] {axis} = {value!r} is not a label of that axis "
                    f"(labels: {', '.join(axes[axis])})"
                )
            labels[axis] = label
        out.append(labels)
    return out


def _is_plain(axis: str, values: Mapping[str, Mapping[str, Any]]) -> bool:
    return all(list(keys) == [axis] for keys in values.values())


def _label(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _table(raw: Mapping[str, Any], key: str, path: Path) -> dict[str, Any]:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{key}] must be a table")
    return dict(value)


def _known(raw: Mapping[str, Any], valid: tuple[str, ...], what: str, listing: str) -> None:
    for key in raw:
        if key not in valid:
            raise ConfigError(f"{what} {key!r}{suggest(key, valid)} ({listing}: {', '.join(valid)})")


def _positive(value: Any, name: str, path: Path, allow_zero: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and (value > 0 or allow_zero and value == 0)
    if not ok:
        kind = "non-negative" if allow_zero else "positive"
        raise ConfigError(f"{path}: resources.{name} = {value!r} must be a {kind} number")
    return float(value)
