"""One driver per sweep folder: an OS file lock (``fcntl.flock`` on ``<sweep>/.lock``) held for the driver's life.

The lock file also says who holds it (``pid``, host, start time) so a second ``ws batch`` of the same sweep can
name the holder in its one-line error. The kernel drops the lock when the holder's process ends, however it ends
(``kill -9`` included), so a stale lock file never blocks a later driver.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from recorders.format.errors import WsError

LOCK = ".lock"


class SweepLock:
    """``with SweepLock(directory):`` holds the sweep's lock or raises :class:`WsError` (exit 2) naming the holder."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / LOCK
        self._fd = -1

    def __enter__(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise WsError(
                f"sweep {self.path.parent} is being run by another ws batch ({holder(self.path)}); "
                "wait for it to finish (or stop it), then run this command again"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise WsError(f"cannot lock sweep {self.path.parent} ({exc.strerror or exc}); check the folder") from None
        since = datetime.now(UTC).isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = -1


def holder(path: Path) -> str:
    """``pid N on HOST since TIME`` from a lock file, or ``unknown holder`` when it cannot be read."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"pid {int(info['pid'])} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown holder"
