"""Errors raised by the export stage (desk side, between ``trainer`` and ``edge_agent``).

Kept in its own module so callers (CLI, CI scripts) can catch export failures without
importing TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

# A bad value is shown in an error up to this many characters (a whole config dict is noise).
MAX_SHOWN_CHARS = 80


class ExportError(RuntimeError):
    """A trained model could not be converted into a TFLite file the gateway can run."""


def describe_invalid(path: Path, what: str, exc: ValidationError) -> str:
    """One line per problem: the field's dotted path, what is wrong and the value found."""
    lines = [f"{path}: invalid {what}, {exc.error_count()} problem(s):"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        got = ""
        if err["type"] != "missing":
            shown = repr(err["input"])
            if len(shown) > MAX_SHOWN_CHARS:
                shown = shown[: MAX_SHOWN_CHARS - 3] + "..."
            got = f" (got {shown})"
        lines.append(f"  {field}: {err['msg']}{got}")
    return "\n".join(lines)
