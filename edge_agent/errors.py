"""Error types shared by the device pipeline, the trainer and export.

Every error carries enough context (file, column, row, key) for a person to fix the input
without reading a traceback; the CLIs print ``str(error)`` and exit with code 2.
"""

from __future__ import annotations

# The exit code of every CLI when the input is wrong (a config, a file, a key): what an operator
# must fix before a start, as systemd's RestartPreventExitStatus knows it.
EXIT_INPUT_ERROR = 2


class EdgeAnomalyError(Exception):
    """Base of every error the CLIs report as a clean message (exit code 2)."""


class DataError(EdgeAnomalyError):
    """A sensor history file cannot be used: names the file, and the column and row if known."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        column: str | None = None,
        row: int | None = None,
    ) -> None:
        self.path = path
        self.column = column
        self.row = row
        where = []
        if path is not None:
            where.append(str(path))
        if column is not None:
            where.append(f"column {column!r}")
        if row is not None:
            # Rows are reported 1-based counting the header as row 1, as a spreadsheet shows them.
            where.append(f"row {row}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class BundleError(EdgeAnomalyError):
    """A model bundle is unsigned, tampered with, incomplete or incompatible."""


class ConfigError(EdgeAnomalyError):
    """A config file or command-line setting is invalid."""
