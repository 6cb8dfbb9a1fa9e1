"""Strings from recordings, specs and manifests made safe for a terminal: the one place ws strips control codes.

A recording's method, dataset, error, config values, gate labels and event messages, a spec's names and tags, and
a failed run's last stderr line are data that anyone could have written. Printed raw, an escape sequence in them
clears the screen, retitles the terminal or rewrites what the user reads. Every rendering point (CLI tables and
errors, the viewer) passes such strings through :func:`clean`; ``--json`` keeps the raw values (JSON escapes
control characters itself).
"""

from __future__ import annotations

import re

# ANSI escape sequences (CSI ... final byte, OSC/DCS/APC/PM/SOS ... terminator, two-byte ESC x), 7- and 8-bit forms.
_SEQUENCE = re.compile(
    r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"  # CSI
    r"|(?:\x1b[\]P^_X]|[\x90\x98\x9d\x9e\x9f]).*?(?:\x07|\x1b\\|\x9c|$)"  # OSC, DCS, SOS, PM, APC strings
    r"|\x1b[@-Z\\-_]",  # other two-byte escapes
    re.DOTALL,
)
# What is left: C0 and C1 controls, DEL, and the Unicode bidirectional overrides that reorder what is shown.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(value: object) -> str:
    """``str(value)`` without terminal control sequences or control characters; tabs and newlines become spaces."""
    text = str(value)
    if text.isprintable():
        return text
    text = _SEQUENCE.sub("", text)
    return _CONTROL.sub(lambda m: " " if m.group() in "\t\n\r" else "", text)
