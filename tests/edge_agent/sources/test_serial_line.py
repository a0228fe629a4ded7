"""The serial line source against a real serial line: a ``socat`` pty pair.

One end (``mcu``) plays the microcontroller, written with plain ``os.write``; the source opens
the other end (``agent``) with pyserial, exactly as it opens /dev/ttyUSB0 on a gateway. Killing
socat is an unplugged USB adapter; a new socat with the same link names is the adapter back.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from edge_agent.sources.config import SerialLineSource
from edge_agent.sources.serial_line import SerialLine

SOCAT = shutil.which("socat")
pytestmark = pytest.mark.skipif(
    SOCAT is None, reason="socat not installed (apt-get install socat): needs a real pty pair"
)

WAIT_S = 5.0  # upper bound for anything here to happen; the usual case is milliseconds
POLL_S = 0.01
REOPEN_S = 0.2


def wait_for(cond: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(POLL_S)


class FakeSink:
    """Collects what the source hands over (the sink is our own two-method interface)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rows: list[dict[str, float]] = []

    def put(self, source: str, readings: Mapping[str, float], t: float) -> None:
        assert source == "mcu"
        assert abs(t - time.time()) < WAIT_S
        with self.lock:
            self.rows.append(dict(readings))

    def put_row(
        self,
        source: str,
        t: float,
        readings: Mapping[str, float],
        stop: threading.Event | None = None,
    ) -> bool:
        raise AssertionError("a live source never sends whole rows")

    def values(self, *channels: str) -> list[tuple[float, ...]]:
        with self.lock:
            return [tuple(r[c] for c in channels) for r in self.rows]


class PtyPair:
    """``socat`` joining two ptys; ``mcu`` and ``agent`` are the symlinks to them."""

    def __init__(self, tmp: Path) -> None:
        self.mcu = tmp / "mcu"
        self.agent = tmp / "agent"
        self.proc: subprocess.Popen[bytes] | None = None
        self.fd: int | None = None

    def start(self) -> None:
        assert SOCAT is not None
        self.proc = subprocess.Popen(
            [
                SOCAT,
                "-d",
                "-d",
                f"pty,raw,echo=0,link={self.mcu}",
                f"pty,raw,echo=0,link={self.agent}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self.mcu.exists() and self.agent.exists())
        # Kept open: socat ends the pair when a side it relays reaches end of file.
        self.fd = os.open(self.mcu, os.O_RDWR | os.O_NOCTTY)

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        os.write(self.fd, data)

    def kill(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(WAIT_S)
            self.proc = None


@pytest.fixture
def pty(tmp_path: Path) -> Iterator[PtyPair]:
    pair = PtyPair(tmp_path)
    pair.start()
    yield pair
    pair.kill()


StartSource = Callable[..., tuple[SerialLine, "FakeSink"]]


@pytest.fixture
def run_source() -> Iterator[StartSource]:
    """Starts sources on a fresh sink and stops them at the end, whatever happened."""
    started: list[SerialLine] = []

    def start(pty: PtyPair, **cfg: object) -> tuple[SerialLine, FakeSink]:
        config = SerialLineSource.model_validate(
            {
                "type": "serial_line",
                "name": "mcu",
                "port": str(pty.agent),
                "baudrate": 115200,
                "reopen_s": REOPEN_S,
                **cfg,
            }
        )
        src, sink = SerialLine(config), FakeSink()
        started.append(src)
        src.start(sink)
        return src, sink

    yield start
    for src in started:
        src.stop()
        assert not src.running


def start_synced(
    run_source: StartSource, pty: PtyPair, **cfg: object
) -> tuple[SerialLine, FakeSink]:
    src, sink = run_source(pty, **cfg)
    wait_for(lambda: src.connected)
    # A newline first: a source that cannot yet know it sits at a line start drops the
    # (here empty) fragment before it without counting it.
    pty.write(b"\n")
    return src, sink


def write_until_read(
    pty: PtyPair, sink: FakeSink, line: bytes, channels: tuple[str, ...], want: tuple[float, ...]
) -> None:
    """Write ``line`` again and again until it is the latest reading: a port just (re)opened
    may still drop the first line it sees as the fragment of an older one."""

    def arrived() -> bool:
        pty.write(line)
        time.sleep(0.05)
        got = sink.values(*channels)
        return bool(got) and got[-1] == want

    wait_for(arrived)


def test_csv_values_arrive(pty: PtyPair, run_source: StartSource) -> None:
    src, sink = start_synced(run_source, pty, columns=["temp", "", "press"])
    assert src.channels == ["temp", "press"]
    pty.write(b"21.5,whatever,1013.25\r\n-3e-2,0,+7\nnan,1,NaN\n")
    wait_for(lambda: len(sink.rows) == 3)
    got = sink.values("temp", "press")
    assert got[:2] == [(21.5, 1013.25), (-0.03, 7.0)]
    assert all(math.isnan(v) for v in got[2])
    assert src.counters.malformed == 0
    assert src.counters.samples == 6


def test_kv_values_arrive(pty: PtyPair, run_source: StartSource) -> None:
    src, sink = start_synced(run_source, pty, format="kv", columns=["a", "b"])
    pty.write(b"a=1.5 b=2\nb=3;a=-4e2, mode=auto\na=nan\n")
    wait_for(lambda: len(sink.rows) == 3)
    assert sink.rows[0] == {"a": 1.5, "b": 2.0}
    assert sink.rows[1] == {"a": -400.0, "b": 3.0}  # 'mode' is not a column: ignored
    assert math.isnan(sink.rows[2]["a"])
    assert src.counters.malformed == 0
    t0 = time.monotonic()
    src.stop()
    assert time.monotonic() - t0 < 0.5  # the read timeout lets it notice the stop quickly


def test_kv_without_columns_takes_every_key(pty: PtyPair, run_source: StartSource) -> None:
    src, sink = start_synced(run_source, pty, format="kv")
    assert src.channels == []
    pty.write(b"rpm=1500 temp=40.5\nvib=0.02\nrpm=oops\n")
    wait_for(lambda: len(sink.rows) == 2 and src.counters.malformed == 1)
    assert sink.rows == [{"rpm": 1500.0, "temp": 40.5}, {"vib": 0.02}]
    assert src.channels == ["rpm", "temp", "vib"]  # what a lost port sets to NaN


def test_corrupt_stream_skips_only_bad_lines(pty: PtyPair, run_source: StartSource) -> None:
    src, sink = start_synced(run_source, pty, columns=["a", "b", "c"], max_line_bytes=24)
    writes = [
        b"1,2,3\n",
        b"\xff\xfe\x00\x80garbage\n",  # undecodable
        b"4,5\n",  # too few fields
        b"6,seven,8\n",  # text in a numeric field
        b"1," * 20 + b"1\n",  # over max_line_bytes in one write
        b"10,1",  # a good line split across writes
        b"1,12\n",
        b"1,2,3,4\n",  # too many fields
        b"9" * 20,  # an over-long line spread over writes, counted once
        b"9" * 20,
        b"9" * 20 + b"\n",
        b"1_0,2,3\n",  # float() would take it; a serial glitch, not a number
        b"13,nan,15\n",
    ]
    for chunk in writes:
        pty.write(chunk)
        time.sleep(0.02)  # separate reads, so lines really arrive in pieces
    wait_for(lambda: len(sink.rows) == 3)
    time.sleep(0.2)  # nothing else may trickle in
    got = sink.values("a", "b", "c")
    assert got[:2] == [(1.0, 2.0, 3.0), (10.0, 11.0, 12.0)]
    assert got[2][0] == 13.0
    assert math.isnan(got[2][1])
    assert got[2][2] == 15.0
    assert len(got) == 3
    assert src.counters.malformed == 7
    assert src.running


def test_partial_line_at_startup_is_dropped(pty: PtyPair, run_source: StartSource) -> None:
    # The board streams without pause before the agent opens the port, and every write ends
    # one byte into the next line: whenever the agent opens, its first bytes are '0,20,30',
    # the tail of '10,20,30', which parses as a wrong reading if it is not dropped.
    stop = threading.Event()

    def board() -> None:
        pty.write(b"1")
        while not stop.is_set():
            time.sleep(0.01)
            pty.write(b"0,20,30\n1")

    writer = threading.Thread(target=board, daemon=True)
    writer.start()
    try:
        time.sleep(0.05)
        src, sink = run_source(pty, columns=["a", "b", "c"])
        wait_for(lambda: len(sink.rows) >= 10)
    finally:
        stop.set()
        writer.join()
    assert set(sink.values("a", "b", "c")) == {(10.0, 20.0, 30.0)}
    assert src.counters.malformed == 1  # the fragment


def test_lost_port_reconnects(pty: PtyPair, run_source: StartSource) -> None:
    src, sink = start_synced(run_source, pty, columns=["a", "b"])
    pty.write(b"1,2\n")
    wait_for(lambda: len(sink.rows) == 1)

    pty.kill()  # USB adapter unplugged
    wait_for(lambda: src.counters.poll_errors == 1)
    wait_for(lambda: len(sink.rows) == 2)
    assert all(math.isnan(v) for v in sink.values("a", "b")[1])  # once, for every channel
    time.sleep(3 * REOPEN_S)  # reopen attempts fail while it is away
    assert len(sink.rows) == 2
    assert src.running
    assert not src.connected

    pty.start()  # plugged back in: same device name
    wait_for(lambda: src.connected)
    assert src.counters.reconnects == 1

    write_until_read(pty, sink, b"5,6\n", ("a", "b"), (5.0, 6.0))
    assert src.counters.poll_errors == 1
