"""What the OTA rollout bench (``bench/ota_rollout.py``) watches a fleet of agents with.

* :class:`ByteRelay`: a TCP relay between one agent and the broker that counts the bytes each
  way, with a time line, so the bytes the broker sent to one gateway during an update are
  known exactly (the broker's ``$SYS`` counters are only fleet-wide totals);
* :class:`FleetWatch`: an MQTT subscriber to every agent's retained update report and status
  heartbeat, each message kept with its arrival time;
* :class:`RssSampler`: each agent's VmRSS from ``/proc/<pid>/status``, sampled on a thread;
* :func:`agent_config`: the agent's TOML for the bench (``[ota]`` enabled, a 1 s heartbeat).
"""

from __future__ import annotations

import bisect
import contextlib
import json
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paho.mqtt.client import Client, MQTTMessage, MQTTv5
from paho.mqtt.enums import CallbackAPIVersion

LOCALHOST = "127.0.0.1"
RELAY_BUFFER_BYTES = 65536
RSS_EVERY_S = 0.1
WATCH_POLL_S = 0.1
CONNECT_TIMEOUT_S = 10.0


class ByteRelay:
    """Listens on a free local port and relays every connection to ``127.0.0.1:target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._server = socket.create_server((LOCALHOST, 0))
        self.port = int(self._server.getsockname()[1])
        self.down = 0  # broker -> client bytes, all connections
        self.up = 0
        self._times: list[float] = [time.monotonic()]
        self._totals: list[int] = [0]
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def down_at(self, t: float) -> int:
        """Bytes sent down by monotonic time ``t``."""
        with self._lock:
            i = bisect.bisect_right(self._times, t)
            return self._totals[max(0, i - 1)]

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOCALHOST, self.target), CONNECT_TIMEOUT_S)
            except OSError:
                client.close()
                continue
            self._socks += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            while data := src.recv(RELAY_BUFFER_BYTES):
                dst.sendall(data)
                with self._lock:
                    if down:
                        self.down += len(data)
                        self._times.append(time.monotonic())
                        self._totals.append(self.down)
                    else:
                        self.up += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._server.close()
        for s in self._socks:
            s.close()


class FleetWatch:
    """Every ``<prefix>/<machine>/model`` report and ``/status`` heartbeat, timed on arrival."""

    def __init__(self, port: int, prefix: str) -> None:
        self.seen: list[tuple[float, str, str, dict[str, Any]]] = []  # (t, machine, kind, body)
        self._cond = threading.Condition()
        self._client = Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"bench-watch-{uuid.uuid4().hex[:8]}",
            protocol=MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.connect(LOCALHOST, port)
        self._client.subscribe([(f"{prefix}/+/model", 1), (f"{prefix}/+/status", 1)])
        self._client.loop_start()

    def _on_message(self, client: Client, userdata: Any, msg: MQTTMessage) -> None:
        _, name, kind = msg.topic.split("/")
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if not isinstance(body, dict):
            return  # the bare `offline` last will
        with self._cond:
            self.seen.append((time.monotonic(), name, kind, body))
            self._cond.notify_all()

    def _of(
        self, name: str, kind: str, since: float, until: float
    ) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            return [
                (t, b)
                for t, n, k, b in self.seen
                if n == name and k == kind and since <= t <= until
            ]

    def first_state(
        self, name: str, state: str, version: str | None, *, since: float, wait_s: float = 0.0
    ) -> float | None:
        """When ``name`` first reported ``state`` (with ``version`` active) after ``since``."""
        deadline = time.monotonic() + wait_s
        while True:
            for t, body in self._of(name, "model", since, float("inf")):
                if body.get("state") == state and version in (None, body.get("active")):
                    return t
            if time.monotonic() >= deadline:
                return None
            time.sleep(WATCH_POLL_S)

    def counts(self, name: str, since: float, until: float = float("inf")) -> list[dict[str, int]]:
        return [b["counts"] for _, b in self._of(name, "status", since, until) if "counts" in b]

    def unscored_gap(self, name: str, since: float, until: float = float("inf")) -> int | None:
        """Median over the heartbeats in the span of rows pushed less windows made."""
        gaps = [c["rows"] - c["windows"] for c in self.counts(name, since, until)]
        return int(statistics.median(gaps)) if gaps else None

    def wait_heartbeats(self, name: str, n: int, *, since: float, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: len(self.counts_nolock(name, since)) >= n, timeout)

    def counts_nolock(self, name: str, since: float) -> list[dict[str, Any]]:
        return [
            b
            for t, m, k, b in self.seen
            if m == name and k == "status" and t >= since and "counts" in b
        ]

    def wait_rows(self, names: Sequence[str], rows: int, timeout: float) -> None:
        """Until every agent's heartbeat says it scored more than ``rows`` rows."""

        def enough() -> bool:
            return all(
                any(b["counts"]["rows"] > rows for b in self.counts_nolock(n, 0.0)) for n in names
            )

        with self._cond:
            if not self._cond.wait_for(enough, timeout):
                raise RuntimeError(f"the agents did not score {rows} rows in {timeout:.0f} s")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RssSampler:
    """VmRSS of each pid every :data:`RSS_EVERY_S`, on a thread."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.samples: list[tuple[float, list[float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            try:
                row = [vm_rss_mb(p) for p in self.pids]
            except OSError:  # an agent is gone (the end of the run)
                return
            self.samples.append((time.monotonic(), row))

    def steady_and_peak(self, i: int, t_steady: float, t0: float, t1: float) -> tuple[float, float]:
        """Agent ``i``'s median RSS in [t_steady, t0] and its largest in [t0, t1], in MB."""
        steady = [r[i] for t, r in self.samples if t_steady <= t <= t0]
        during = [r[i] for t, r in self.samples if t0 <= t <= t1]
        base = statistics.median(steady) if steady else float("nan")
        return base, max(during, default=float("nan"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)


def agent_config(
    path: Path,
    *,
    machine_id: str,
    trust: Path,
    port: int,
    bundle: Path | None,
    sources: str,
    groups: Sequence[str],
    **ota: object,
) -> Path:
    """The agent's config at ``path`` (its state directory beside it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    model = f'bundle = "{bundle}"\n' if bundle is not None else ""
    ota_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in ota.items())
    path.write_text(f"""
machine_id = "{machine_id}"
state_dir = "{path.parent / "state"}"

[model]
{model}trust_key = "{trust}"

{sources}

[metrics]
port = 0

[mqtt]
host = "{LOCALHOST}"
port = {port}
heartbeat_s = 1
backoff_initial_s = 0.2
backoff_max_s = 1

[ota]
enabled = true
groups = {json.dumps(list(groups))}
{ota_lines}""")
    return path
