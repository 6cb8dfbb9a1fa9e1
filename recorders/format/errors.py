"""The one error type users see.

Anything the user can fix (a bad path, a corrupt file, an unknown method name, an invalid config value) raises
:class:`WsError` with a one-line message that names the problem and the fix. The CLI prints the message and exits
with code 2, without a traceback. This module imports nothing heavy, so every layer can use it.
"""

from __future__ import annotations


class WsError(Exception):
    """A user-facing error: ``str(exc)`` is one line that names the problem and how to fix it."""

    exit_code = 2


class RecordingError(WsError):
    """A file is missing, not HDF5, not a ws recording, truncated, or of an unsupported schema version."""


class ConfigError(WsError):
    """An invalid option, config key, config value or combination of flags."""


class DataError(WsError):
    """A dataset, split file, image or checkpoint on disk is missing or unreadable."""
