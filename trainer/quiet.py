"""Quiet desk commands: TensorFlow, CUDA, absl and TFLite start-up noise off the terminal.

Used by the desk CLIs (``python -m trainer``, ``python -m export``) around the whole command,
unless ``--verbose``. Importing TensorFlow, training, converting to TFLite and creating a
LiteRT interpreter print lines a user can do nothing about: oneDNN and CUDA-driver notices,
absl's "All log messages before absl::InitializeLog()", converter settings, the XNNPACK
delegate. Most of them come from C++ that writes straight to file descriptors 1 and 2, so
neither ``TF_CPP_MIN_LOG_LEVEL`` (ignored by absl before its logging is initialised) nor
Python logging can stop them. :func:`quiet_native_output` therefore points fds 1 and 2 at a
scratch file while keeping Python's own ``sys.stdout``/``sys.stderr`` (prints, logging,
progress bars, tracebacks) on the terminal. What the native code printed is shown after all
when the command fails with an unexpected exception, so a genuine error is never hidden.

Only the desk tools use this; the gateway path (``edge_agent``) never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import IO, TextIO

# Set before TensorFlow is imported: 3 hides its C++ INFO, WARNING and ERROR log lines once
# absl logging is initialised (the lines before that need the fd redirection below).
TF_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3"}
# Python loggers of the TensorFlow stack that report converter and tracing details at
# WARNING level ("Please consider providing the trackable_obj ...").
NOISY_LOGGERS = ("absl", "tensorflow", "keras")
# On an unexpected failure, at most this much of the hidden native output is shown (bytes):
# the end of it, where a native error message would be.
FAILURE_TAIL_BYTES = 16_384


def quiet_tensorflow_logging() -> dict[str, int]:
    """Environment and Python logging settings that keep TensorFlow quiet; call before import.

    A value the user set in the environment is kept. Returns the loggers' previous levels.
    """
    for name, value in TF_QUIET_ENV.items():
        os.environ.setdefault(name, value)
    previous = {}
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        previous[name] = logger.level
        logger.setLevel(logging.ERROR)
    return previous


def quiet_unless(verbose: bool) -> AbstractContextManager[None]:
    """What a desk CLI wraps its command in: everything shown with ``--verbose``, else quiet."""
    return nullcontext() if verbose else quiet_native_output()


def desk_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A desk CLI's parser: ``prog``, the first line of its module ``doc``, and ``--verbose``."""
    p = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug messages and show TensorFlow's own start-up output",
    )
    return p


def desk_logging(verbose: bool, level: int = logging.INFO) -> None:
    """A desk CLI's logging: ``level`` and up (DEBUG with ``--verbose``), one line each."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else level,
        format="%(levelname)s %(name)s: %(message)s",
    )


@contextmanager
def quiet_native_output() -> Iterator[None]:
    """Send what C/C++ code writes to fds 1 and 2 to a scratch file for the ``with`` body.

    Python's ``sys.stdout``/``sys.stderr``, and logging handlers writing to them, stay on the
    original terminal (or pipe) if they were writing to fd 1/2; streams already redirected
    elsewhere (a test's capture) are left alone. If the body raises anything but
    ``SystemExit``/``KeyboardInterrupt``, the end of the hidden native output is written to
    the real stderr before the exception propagates. A hard crash still reaches the terminal
    through :mod:`faulthandler`.
    """
    levels = quiet_tensorflow_logging()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    sink = tempfile.TemporaryFile()  # noqa: SIM115 (closed in the finally below)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    swapped: list[tuple[str, TextIO, io.TextIOWrapper]] = []
    own_faulthandler = False
    try:
        for name, fd in (("stdout", 1), ("stderr", 2)):
            old: TextIO = getattr(sys, name)
            if _fileno(old) == fd:
                new = _reopen(old, saved[fd])
                setattr(sys, name, new)
                _repoint_handlers(old, new)
                swapped.append((name, old, new))
        if not faulthandler.is_enabled():
            faulthandler.enable(file=saved[2])
            own_faulthandler = True
        for fd in (1, 2):
            os.dup2(sink.fileno(), fd)
        try:
            yield
        except Exception:
            _show_tail(sink, saved[2])
            raise
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            os.dup2(saved[fd], fd)
        if own_faulthandler:
            faulthandler.disable()
        for name, old, new in reversed(swapped):
            setattr(sys, name, old)
            _repoint_handlers(new, old)
            new.close()
        for fd in saved.values():
            os.close(fd)
        sink.close()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return None


def _reopen(like: TextIO, fd: int) -> io.TextIOWrapper:
    """An unbuffered text stream on ``fd`` with the encoding of ``like`` (fd stays open)."""
    stream = open(fd, "w", encoding=like.encoding, errors=like.errors, closefd=False)  # noqa: SIM115
    stream.reconfigure(write_through=True)
    return stream


def _repoint_handlers(old: IO[str], new: IO[str]) -> None:
    """Logging handlers bound to ``old`` (basicConfig's, TensorFlow's own) now write to
    ``new``: they took the stream when they were made, not at every record."""
    loggers: list[logging.Logger] = [logging.getLogger()]
    loggers += [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        for handler in lg.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is old:
                handler.setStream(new)


def _show_tail(sink: IO[bytes], fd: int) -> None:
    size = sink.seek(0, os.SEEK_END)
    if size == 0:
        return
    sink.seek(max(0, size - FAILURE_TAIL_BYTES))
    tail = sink.read()
    header = b"--- native output (TensorFlow/TFLite) hidden before the error ---\n"
    os.write(fd, header + tail + (b"" if tail.endswith(b"\n") else b"\n"))
