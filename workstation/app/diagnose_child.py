"""The viewer's diagnostics child: ``python -P -m workstation.app.diagnose_child RECORDING`` prints JSON.

Run by :func:`workstation.app.data.diagnose_in_subprocess` for large recordings. ``-P`` keeps the working
directory off ``sys.path`` (a stray ``analyses/`` or ``h5py.py`` there never runs), and the result travels as JSON,
not pickle, so the parent only ever parses data. Output: ``{"diagnostics": ...}`` (see :func:`encode`) or
``{"error": one line, "user_error": bool}``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np


def encode(value: Any) -> Any:
    """Dataclasses, numpy arrays and paths as JSON-ready values that :func:`decode_diagnostics` restores exactly
    (arrays keep their dtype; NaN is written as JSON's ``NaN``)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": value.tolist(), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def _arrays(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            return np.asarray(value["__ndarray__"], dtype=np.dtype(value["dtype"]))
        return {k: _arrays(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_arrays(v) for v in value]
    return value


def decode_diagnostics(raw: dict[str, Any]) -> Any:
    """An ``analyses.diagnostics.RecordingDiagnostics`` from what :func:`encode` made of one."""
    from analyses.diagnostics import CollapseThresholds, GateSetDiagnostics, RecordingDiagnostics

    fields = _arrays(raw)
    fields["path"] = Path(fields["path"])
    fields["thresholds"] = CollapseThresholds(**fields["thresholds"])
    fields["gate_sets"] = {name: GateSetDiagnostics(**g) for name, g in fields["gate_sets"].items()}
    return RecordingDiagnostics(**fields)


def main(argv: list[str]) -> int:
    from analyses.diagnostics import diagnose
    from recorders.format import Recording
    from recorders.format.errors import WsError

    try:
        with Recording.open(argv[0]) as rec:
            out: dict[str, Any] = {"diagnostics": encode(diagnose(rec))}
    except WsError as exc:
        out = {"error": str(exc), "user_error": True}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        out = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0], "user_error": False}
    sys.stdout.write(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
