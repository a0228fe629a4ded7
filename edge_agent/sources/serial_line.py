"""Serial line sensors: text lines from a microcontroller on a USB or RS-232 serial port.

Sits at the start of the pipeline, next to the Modbus sources. A small board (Arduino, ESP32)
prints one line per measurement, either ``v1,v2,...`` (``csv``, fields mapped to ``columns``
in order) or ``key=value`` pairs (``kv``), ended by ``\n``, ``\r\n`` or a lone ``\r``. Each
good line becomes one ``sink.put`` stamped with the time it was received. Serial lines are
noisy: a bad line (garbage, NUL bytes, a field that is not a number) is counted and skipped,
and an unplugged adapter (whatever pyserial, termios or the OS raise for it, at open, flush or
read) is reopened every ``reopen_s`` until it is back; neither ever stops the thread. Numbers
are delivered as the floats they spell, however implausible (``1e39``, ``nan``): judging them
is data quality's job.
"""

from __future__ import annotations

import logging
import math
import re
import termios
import time
from typing import Any

# pyserial is in the "edge" extra; edge_agent.sources.registry turns a missing one into a
# message naming the extra.
import serial

from edge_agent.logs import Throttle
from edge_agent.sources.base import ReadingSink, Source
from edge_agent.sources.config import SerialLineSource

log = logging.getLogger(__name__)

# Read timeout: the longest a read blocks, so the thread sees a stop request within ~0.2 s.
READ_TIMEOUT_S = 0.1
# How often a repeating warning (bad lines, a port that stays away) reaches the log, by
# default; the agent passes its [log] repeat_every_s.
REPEAT_LOG_EVERY_S = 300.0
# A plain decimal or scientific number, or nan; stricter than float() (no '1_0', no 'inf').
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?nan", re.IGNORECASE)
_KV_SEPARATORS = re.compile(r"[\s,;]+")
# A channel name a board may send in kv mode without configured columns (it becomes a channel).
_KEY = re.compile(r"[A-Za-z0-9_.\-]+")
# Control characters other than tab: line noise, never part of a reading.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Boards end lines with "\n", "\r\n" or (some firmware) a lone "\r".
_LINE_END = re.compile(rb"\r\n|\r|\n")
# What a port that went away raises: pyserial's own error, the OS error under it, or (from
# tcflush/tcgetattr on a vanished USB adapter) termios.error, which is neither.
PORT_ERRORS: tuple[type[Exception], ...] = (serial.SerialException, OSError, termios.error)


class MalformedLine(ValueError):
    """A line that does not parse; the message says why (for the throttled log)."""


def _number(text: str) -> float:
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise MalformedLine(f"not a number: {text[:20]!r}")
    return float(text)


class SerialLine(Source):
    """Reads one serial port line by line; see the module docstring."""

    def __init__(
        self, cfg: SerialLineSource, *, repeat_every_s: float = REPEAT_LOG_EVERY_S
    ) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self._columns = list(cfg.columns)
        self._seen: dict[str, None] = dict.fromkeys(c for c in cfg.columns if c)
        self._throttle = Throttle(log, repeat_every_s)
        self.connected = False  # the port is open (read by tests and the heartbeat)

    @property
    def channels(self) -> list[str]:
        # kv without columns: the keys seen so far (the board decides).
        return list(self._seen)

    def parse(self, raw: bytes) -> dict[str, float]:
        """One line (without its newline) -> readings; raises MalformedLine."""
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            raise MalformedLine("undecodable bytes") from None
        if bad := _CONTROL.search(line):
            raise MalformedLine(f"control byte {bad.group()!r}")
        if self.cfg.format == "csv":
            fields = line.split(self.cfg.delimiter)
            if len(fields) != len(self._columns):
                raise MalformedLine(f"{len(fields)} fields, expected {len(self._columns)}")
            return {c: _number(f) for c, f in zip(self._columns, fields, strict=True) if c}
        out: dict[str, float] = {}
        for token in _KV_SEPARATORS.split(line):
            if not token:  # a leading or trailing separator
                continue
            key, eq, value = token.partition("=")
            if not eq or not key:
                raise MalformedLine(f"not key=value: {token[:20]!r}")
            if self._columns:
                if key in self._columns:
                    out[key] = _number(value)  # keys we do not use are not parsed
            elif _KEY.fullmatch(key):
                out[key] = _number(value)
            else:
                raise MalformedLine(f"not a channel name: {key[:20]!r}")
        return out

    def _open(self) -> Any:
        return serial.Serial(
            self.cfg.port,
            baudrate=self.cfg.baudrate,
            bytesize=self.cfg.bytesize,
            parity=self.cfg.parity,
            stopbits=self.cfg.stopbits,
            timeout=READ_TIMEOUT_S,
            exclusive=True,  # a second reader would steal bytes from the middle of lines
        )

    def _run(self, sink: ReadingSink) -> None:
        lost = False  # the port was open once and went away
        while not self._stop.is_set():
            try:
                port = self._open()
            except PORT_ERRORS as exc:
                self._throttle.warning(
                    "open", "%s: cannot open %s: %s", self.name, self.cfg.port, _why(exc)
                )
                self._stop.wait(self.cfg.reopen_s)
                continue
            self._throttle.clear("open", "%s: %s is open again", self.name, self.cfg.port)
            if lost:
                self.counters.reconnects += 1
            self.connected = True
            try:
                # Bytes queued before we opened carry no usable time stamp. The adapter can
                # vanish between the open and this flush: that is a lost port like any other.
                port.reset_input_buffer()
                self._read(port, sink)
            except PORT_ERRORS as exc:
                lost = True
                self._lost(sink, exc)
            finally:
                self.connected = False
                self._close(port)
            self._stop.wait(self.cfg.reopen_s)

    def _lost(self, sink: ReadingSink, exc: Exception) -> None:
        self.counters.poll_errors += 1
        self._throttle.warning("lost", "%s: lost %s: %s", self.name, self.cfg.port, _why(exc))
        if self._seen:
            # Once per loss, so the sampler does not hold the last values as current.
            sink.put(self.name, dict.fromkeys(self._seen, math.nan), time.time())

    def _close(self, port: Any) -> None:
        try:
            port.close()
        except PORT_ERRORS as exc:
            # The port is gone either way; the loss itself was already counted and logged.
            log.debug("%s: closing %s: %s", self.name, self.cfg.port, _why(exc))

    def _read(self, port: Any, sink: ReadingSink) -> None:
        buf = b""
        # We may have joined in the middle of a line: drop everything up to the first newline.
        synced = False
        overflow = False  # the current line is already too long; skip to its end
        limit = self.cfg.max_line_bytes
        while not self._stop.is_set():
            chunk = port.read(port.in_waiting or 1)
            if not chunk:
                # Silent for a whole read timeout: the board is between lines, so the next
                # byte starts one and nothing needs dropping.
                synced = synced or not buf
                continue
            t = time.time()
            buf += chunk
            # A "\r\n" split across two reads ends the line at "\r" and leaves an empty line,
            # which is skipped like any blank one.
            *lines, buf = _LINE_END.split(buf)
            for raw in lines:
                if not synced or overflow:
                    if raw.strip() and not overflow:
                        self._bad("partial line at start-up")
                    synced, overflow = True, False
                elif len(raw) > limit:
                    self._bad(f"line longer than {limit} bytes")
                elif raw.strip():  # blank lines (keep-alives) are not readings
                    self._line(raw, sink, t)
            if len(buf) > limit and not overflow:
                # Counted now, so an endless line without newline cannot grow the buffer.
                self._bad(f"line longer than {limit} bytes")
                overflow = True
            if overflow:
                buf = b""

    def _line(self, raw: bytes, sink: ReadingSink, t: float) -> None:
        self.counters.polls += 1
        try:
            readings = self.parse(raw)
        except MalformedLine as exc:
            self._bad(str(exc))
            return
        if readings:
            self._seen.update(dict.fromkeys(readings))
            self.counters.samples += len(readings)
            sink.put(self.name, readings, t)

    def _bad(self, why: str) -> None:
        self.counters.malformed += 1
        self._throttle.warning("malformed", "%s: skipped a malformed line (%s)", self.name, why)


def _why(exc: Exception) -> str:
    """An exception for a log line: its type (termios.error says little by its text alone)
    and message."""
    return f"{type(exc).__name__}: {exc}"
