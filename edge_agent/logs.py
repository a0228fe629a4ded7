"""Logging for a daemon on an SD card: journald-friendly lines and throttled repeats.

Used by every part of the agent. Under systemd (``JOURNAL_STREAM`` set) each line starts with
a ``<N>`` syslog priority, which journald turns into the entry's level, and carries no
timestamp (journald adds one). A warning that repeats every poll (a dead device, a broken
serial line) is logged once, then at most once per ``every_s`` with how many were suppressed,
so a failed sensor cannot fill the card.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

# syslog priorities journald understands at the start of a line (sd-daemon.h)
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return f"<{prio}>{record.name}: {super().format(record)}"


def setup_logging(level: str | int = "info") -> None:
    """Configure the root logger once for the process: journald format under systemd,
    ``LEVEL name: message`` with a time stamp on a terminal."""
    lvl = level if isinstance(level, int) else getattr(logging, level.upper())
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(lvl)


class Throttle:
    """Logs a recurring message at most once per ``every_s`` per key, counting the rest."""

    def __init__(self, logger: logging.Logger, every_s: float = 300.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def log(
        self, level: int, key: str, msg: str, *args: object, exc_info: bool = False
    ) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.every_s:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return
            self._last[key] = now
            skipped = self._suppressed.pop(key, 0)
        if skipped:
            msg = f"{msg} ({skipped} more like this suppressed)"
        self.logger.log(level, msg, *args, exc_info=exc_info)

    def clear(self, key: str, msg: str | None = None, *args: object) -> None:
        """The condition behind ``key`` is over: log ``msg`` (if given and the condition had
        been logged) and let the next occurrence log at once."""
        with self._lock:
            had = self._last.pop(key, None) is not None
            self._suppressed.pop(key, None)
        if had and msg:
            self.logger.info(msg, *args)
