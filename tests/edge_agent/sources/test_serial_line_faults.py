"""The serial line source against what a real board and a real USB adapter do wrong.

Over the same real ``socat`` pty pairs as ``test_serial_line``: an adapter that vanishes
between the open and the first flush, or in the middle of a line; floods of binary garbage
and NUL bytes; firmware that ends lines with a lone CR; numbers no sensor means but a line
can spell. None may stop the thread or reach the sink as a reading that was not sent; only a
bug does, and the supervisor restarts the thread then.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest
import serial
from test_registers_faults import same_float
from test_serial_line import (  # the real pty pair and the sink, shared with the plain tests
    REOPEN_S,
    FakeSink,
    PtyPair,
    StartSource,
    pty,  # noqa: F401 (fixture)
    run_source,  # noqa: F401 (fixture)
    start_synced,
    wait_for,
    write_until_read,
)

from edge_agent.service.supervisor import RestartPolicy
from edge_agent.sources.config import SerialLineSource
from edge_agent.sources.serial_line import SerialLine

SETTLE_S = 0.2  # long enough for anything still in flight to have arrived


def same_floats(got: tuple[float, ...], want: tuple[float, ...]) -> bool:
    return len(got) == len(want) and all(map(same_float, got, want))


def test_adapter_vanishing_between_open_and_flush_is_a_lost_port(
    pty: PtyPair,  # noqa: F811
    run_source: StartSource,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unplugged: list[bool] = []

    class UnpluggedRightAfterOpen(serial.Serial):  # type: ignore[misc]  # pyserial is untyped
        """The real pyserial port; the adapter is pulled once, just after the first open,
        so the flush that follows meets a vanished device (termios.error, EIO)."""

        def open(self) -> None:
            super().open()
            if not unplugged:
                unplugged.append(True)
                pty.kill()

    monkeypatch.setattr(serial, "Serial", UnpluggedRightAfterOpen)
    src, sink = run_source(pty, columns=["a", "b"])
    wait_for(lambda: src.counters.poll_errors == 1)
    assert unplugged
    time.sleep(3 * REOPEN_S)  # reopen attempts fail while it is away
    assert src.running
    assert src.health.status()["crashes"] == 0  # handled as a lost port, not a crash
    assert src.counters.poll_errors == 1
    assert all(math.isnan(v) for v in sink.values("a", "b")[-1])

    pty.start()  # plugged back in
    wait_for(lambda: src.connected)

    write_until_read(pty, sink, b"5,6\n", ("a", "b"), (5.0, 6.0))
    assert src.counters.reconnects == 1
    assert src.counters.poll_errors == 1


def test_adapter_vanishing_mid_line_loses_only_that_line(
    pty: PtyPair, run_source: StartSource  # noqa: F811
) -> None:
    src, sink = start_synced(run_source, pty, columns=["a", "b"])
    pty.write(b"1,2\n3,")  # the board is half way through a line
    wait_for(lambda: len(sink.rows) == 1)
    time.sleep(SETTLE_S)
    pty.kill()
    wait_for(lambda: src.counters.poll_errors == 1)
    pty.start()
    wait_for(lambda: src.connected)
    pty.write(b"4\n")  # the rest of a line whose start went with the old port
    pty.write(b"5,6\n")
    wait_for(lambda: len(sink.rows) == 3)
    time.sleep(SETTLE_S)
    got = sink.values("a", "b")
    assert got[0] == (1.0, 2.0)
    assert all(math.isnan(v) for v in got[1])
    assert got[2:] == [(5.0, 6.0)]  # '3,' and '4' never joined into a reading
    assert src.health.status()["crashes"] == 0


def test_garbage_and_nul_floods_are_skipped_and_good_lines_arrive_in_order(
    pty: PtyPair, run_source: StartSource  # noqa: F811
) -> None:
    src, sink = start_synced(run_source, pty, columns=["a", "b"], max_line_bytes=64)
    noise = random.Random(3).randbytes(4000)  # wrong baud rate, a loose ground
    floods = [
        noise,
        b"\x00" * 3000,  # a board in reset holding the line low
        b"\x00\x00\x00",  # a short run of NULs, then a line end
        b"1\x00,2",  # a NUL inside what would be a good line
        b"\x1b[2J1,2",  # a terminal escape in front of one
        b"\xff\xfe\xfd",
    ]
    for i, flood in enumerate(floods):
        pty.write(f"{i},{i}\n".encode())
        for start in range(0, len(flood), 512):
            pty.write(flood[start : start + 512])
            time.sleep(0.005)
        pty.write(b"\n")
    pty.write(b"99,99\n")
    wait_for(lambda: sink.values("a", "b")[-1:] == [(99.0, 99.0)])
    time.sleep(SETTLE_S)
    assert sink.values("a", "b") == [(float(i), float(i)) for i in range(len(floods))] + [
        (99.0, 99.0)
    ]
    assert src.counters.malformed >= len(floods)
    assert src.running
    assert src.health.status()["crashes"] == 0


def test_garbage_never_becomes_a_channel(
    pty: PtyPair, run_source: StartSource  # noqa: F811
) -> None:
    src, sink = start_synced(run_source, pty, format="kv")  # the board names the channels
    pty.write(b"rpm=1500\n\x01\x02=5\n#$%=7 rpm=1\nrpm=1501 t\x00mp=3\n\x00=\x00\nrpm=1502\n")
    wait_for(lambda: len(sink.rows) == 2 and src.counters.malformed == 4)
    time.sleep(SETTLE_S)
    assert sink.rows == [{"rpm": 1500.0}, {"rpm": 1502.0}]
    assert src.channels == ["rpm"]


def test_cr_only_and_mixed_line_endings(
    pty: PtyPair, run_source: StartSource  # noqa: F811
) -> None:
    src, sink = start_synced(run_source, pty, columns=["a", "b"], max_line_bytes=16)
    pty.write(b"1,2\r3,4\r5,6\r")  # firmware that ends lines with CR only
    pty.write(b"7,8\r\n9,10\n")  # and the other two conventions
    pty.write(b"11,12\r")  # a CRLF split across two reads ...
    time.sleep(0.05)
    pty.write(b"\n13,14\r\n")  # ... is one line end, not an empty reading
    for i in range(15, 15 + 2 * 20, 2):  # longer than max_line_bytes in total, never per line
        pty.write(f"{i},{i + 1}\r".encode())
    wait_for(lambda: len(sink.rows) == 7 + 20)
    time.sleep(SETTLE_S)
    want = [(float(i), float(i + 1)) for i in range(1, 15 + 2 * 20, 2)]
    assert sink.values("a", "b") == want
    assert src.counters.malformed == 0


def test_implausible_numbers_are_delivered_as_the_floats_they_spell(
    pty: PtyPair, run_source: StartSource  # noqa: F811
) -> None:
    src, sink = start_synced(run_source, pty, columns=["a", "b"])
    lines = [
        (b"1e39,-1e39", (1e39, -1e39)),
        (b"3.4028235e38,-3.4028235E+38", (3.4028235e38, -3.4028235e38)),
        (b"1e-320,-4.9e-324", (1e-320, -5e-324)),  # float64 subnormals
        (b"1e-400,-0", (0.0, -0.0)),  # below the smallest subnormal: zero, sign kept
        (b"1e400,-1e400", (math.inf, -math.inf)),  # past the float64 range
        (b"nan,-NaN", (math.nan, math.nan)),
    ]
    for text, _ in lines:
        pty.write(text + b"\n")
    wait_for(lambda: len(sink.rows) == len(lines))
    for got, (text, want) in zip(sink.values("a", "b"), lines, strict=True):
        assert same_floats(got, want), (text, got, want)
    assert src.counters.malformed == 0


class CrashesOnFirstLine(SerialLine):
    """A real serial source with a bug that fires once, on the first line."""

    crashed = False

    def _line(self, raw: bytes, sink: Any, t: float) -> None:
        if not self.crashed:
            self.crashed = True
            raise RuntimeError("injected bug on the first line")
        super()._line(raw, sink, t)


def test_a_crash_in_the_read_loop_is_restarted_by_the_supervisor(pty: PtyPair) -> None:  # noqa: F811
    cfg = SerialLineSource.model_validate(
        {"type": "serial_line", "name": "mcu", "port": str(pty.agent), "columns": ["a"],
         "reopen_s": REOPEN_S}
    )
    src, sink = CrashesOnFirstLine(cfg), FakeSink()
    src.health.policy = RestartPolicy(initial_s=0.05, max_s=0.1)
    src.start(sink)
    try:
        wait_for(lambda: src.connected)
        pty.write(b"\n1\n")
        wait_for(lambda: src.health.status()["crashes"] == 1)

        write_until_read(pty, sink, b"2\n", ("a",), (2.0,))
        status = src.health.status()
        assert status["running"] is True
        assert status["crashes"] == 1
        assert status["last_error"] == "RuntimeError: injected bug on the first line"
    finally:
        src.stop()
    assert not src.running
