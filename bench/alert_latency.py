"""Alert latency: from the sample that completes an anomalous window to the broker's PUBACK.

The daemon's own parts, in process: each simulated sample is pushed on its own through the
streaming pipeline (grid, ring buffer, features, forest, int8 autoencoder, threshold,
hysteresis), the episode tracker turns transitions into events, each event is committed to the
SQLite outbox (WAL, synchronous=FULL: an fsync per event) and published at QoS 1 by the MQTT
uplink to a real Mosquitto on loopback. The clock starts before the push of the sample that
completes the window and stops when the uplink sees the PUBACK. Events are waited for one at a
time (an alert is rare; this measures one alert's path, not a backlog).

    python bench/alert_latency.py                 # -> bench/results/alert_latency.json
    python bench/alert_latency.py --rows 6000 --out X   # CI smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, add_bundle_args, bundle_from_args, machine, start_broker

ACK_TIMEOUT_S = 5.0


def measure(bundle: Path, pub: Path, data: Path, work: Path, port: int) -> dict[str, Any]:
    from edge_agent.bundle.verify import verify_bundle
    from edge_agent.config.model import EventsConfig
    from edge_agent.data.table import read_table
    from edge_agent.deliver.config import MqttConfig, OutboxConfig
    from edge_agent.deliver.mqtt import MqttUplink
    from edge_agent.deliver.outbox import Outbox
    from edge_agent.detect.episodes import EpisodeTracker
    from edge_agent.model_slot import load_cascade
    from edge_agent.pipeline import StreamingPipeline

    vb = verify_bundle(bundle, pub)
    m = vb.manifest
    pipe = StreamingPipeline(m, load_cascade(vb))
    # Frequent updates give more messages to time; each is one more alert on the wire.
    tracker = EpisodeTracker(
        "bench", m.model_version, m.channel_names, EventsConfig(update_interval_s=1.0)
    )
    table = read_table(data, channels=m.channel_names)
    outbox = Outbox(work / "events.db", OutboxConfig(), deliver=True)
    acked: dict[str, float] = {}
    cond = threading.Condition()

    def on_ack(event_id: str, t: float) -> None:
        with cond:
            acked[event_id] = t
            cond.notify_all()

    uplink = MqttUplink(
        MqttConfig(host="127.0.0.1", port=port, heartbeat_s=3600),
        "bench",
        outbox,
        lambda: {},
        on_ack=on_ack,
    )
    uplink.start()
    deadline = time.monotonic() + 10
    while not uplink.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    pipe.push(table.timestamps[:1], table.values[:1])  # JIT warm-up outside the timing
    lat_ms: list[float] = []
    by_state: dict[str, list[float]] = {}
    lost = 0
    try:
        for i in range(1, table.rows):
            t0 = time.monotonic()
            batch = pipe.push(table.timestamps[i : i + 1], table.values[i : i + 1])
            events = tracker.update(batch, time.time())
            for e in events:
                outbox.add(e)
                uplink.wake()
            for e in events:
                with cond:
                    ok = cond.wait_for(lambda e=e: e.id in acked, ACK_TIMEOUT_S)
                if not ok:
                    lost += 1
                    continue
                ms = (acked[e.id] - t0) * 1e3
                lat_ms.append(ms)
                by_state.setdefault(e.state, []).append(ms)
    finally:
        uplink.stop(drain_timeout_s=5)
        outbox.close()

    def stats(xs: list[float]) -> dict[str, float]:
        a = np.asarray(xs)
        return (
            {
                "n": int(a.size),
                "p50_ms": round(float(np.percentile(a, 50)), 3),
                "p95_ms": round(float(np.percentile(a, 95)), 3),
                "p99_ms": round(float(np.percentile(a, 99)), 3),
                "max_ms": round(float(a.max()), 3),
            }
            if a.size
            else {"n": 0}
        )

    return {
        "all": stats(lat_ms),
        "by_state": {k: stats(v) for k, v in sorted(by_state.items())},
        "not_acked_within_s": {"timeout_s": ACK_TIMEOUT_S, "count": lost},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=60_000, help="simulated samples pushed")
    add_bundle_args(ap)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "alert_latency.json")
    a = ap.parse_args(argv)
    from edge_agent.simulator import simulate_plant

    with tempfile.TemporaryDirectory(prefix="alert-lat-") as tmp:
        work = Path(tmp)
        bundle, pub = bundle_from_args(a, work)
        data = work / "live.csv"
        simulate_plant(rows=a.rows, seed=41, anomaly_fraction=0.08).write_csv(data)
        broker, port = start_broker(work)
        if broker is None or port is None:
            raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
        try:
            result = measure(bundle, pub, data, work, port)
        finally:
            broker.terminate()
            broker.wait(10)
    report = {
        "benchmark": "alert latency: window-completing sample pushed -> PUBACK from Mosquitto "
        "on loopback (outbox commit with fsync included), one alert at a time",
        "rows": a.rows,
        **result,
        "target_p99_ms": 20.0,
        "machine": machine(),
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
