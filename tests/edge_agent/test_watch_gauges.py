"""The gauges the live view reads (score ratio, alert state, per-channel error share), and the
view's scraper that reads them.

The agent runs in-process over a recorded file (a replay source) with the real int8 bundle and
serves /metrics on a real socket; the expected values come from ``StreamingPipeline`` over the
same file, as ``replay`` computes them. The scraper is also checked against an endpoint with
HTTPS and basic auth (certificates from ``tests/pki.py``) and against no endpoint at all.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agent.agent_support import replay_source, write_config
from metrics_support import sample_snapshot
from pki import write_pki, write_secret

from edge_agent.agent import Agent
from edge_agent.bundle.verify import verify_bundle
from edge_agent.config.load import load_config
from edge_agent.config.model import MetricsConfig, MetricsTlsConfig
from edge_agent.data.table import read_table
from edge_agent.detect.cascade import STAGE_AUTOENCODER, STAGE_SCREEN
from edge_agent.health import LatestWindow
from edge_agent.metrics import AgentMetrics
from edge_agent.model_slot import load_cascade
from edge_agent.pipeline import StreamingPipeline, WindowBatch
from edge_agent.watch.scrape import MetricsReader, ScrapeError

SHARE_TOLERANCE = 1e-6  # float32 shares through the text format


def test_agent_gauges_show_the_latest_window(
    tmp_path: Path, bundle: Path, keys: Path, sim_csv: Path
) -> None:
    cfg_path = write_config(
        tmp_path / "agent.toml", bundle=bundle, keys=keys, sources=replay_source(sim_csv)
    )
    agent = Agent(cfg_path, load_config(cfg_path))
    try:
        agent.start()
        agent.run()
        assert agent.metrics_port is not None
        got = MetricsReader(MetricsConfig(port=agent.metrics_port)).read(at=0.0)
    finally:
        agent.stop()

    vb = verify_bundle(bundle, keys / "signing.pub")
    table = read_table(sim_csv, channels=vb.manifest.channel_names)
    batch = StreamingPipeline(vb.manifest, load_cascade(vb)).push(
        table.timestamps, table.values
    )
    last = batch.size - 1
    threshold = vb.manifest.threshold.alert_threshold
    stage2 = np.flatnonzero(batch.stage == STAGE_AUTOENCODER)
    assert stage2.size  # the file has faults: some windows reached stage 2
    expected_ratio = (
        batch.error[last] / threshold if batch.stage[last] == STAGE_AUTOENCODER else 0.0
    )
    assert got.rows == table.rows
    assert got.windows == batch.size
    assert got.stage2 == stage2.size
    assert got.score_ratio == pytest.approx(expected_ratio)
    assert got.alert == bool(batch.alert[last])
    shares = batch.contributions[stage2[-1]]
    assert list(got.shares) == vb.manifest.channel_names
    assert list(got.shares.values()) == pytest.approx(shares.tolist(), abs=SHARE_TOLERANCE)
    assert sum(got.shares.values()) == pytest.approx(1.0, abs=1e-4)
    assert got.missing == []


def _batch(stages: list[int], errors: list[float], alert: list[bool]) -> WindowBatch:
    n = len(stages)
    contributions = np.zeros((n, 2), np.float32)
    for i, s in enumerate(stages):
        if s == STAGE_AUTOENCODER:
            contributions[i] = (0.1 * (i + 1), 1 - 0.1 * (i + 1))
    f64, i64 = np.zeros(n), np.zeros(n, np.int64)
    return WindowBatch(
        0, f64, i64, i64, np.array(stages, np.int8), np.array(errors), f64,
        np.zeros(n, np.bool_), np.array(alert), np.array(errors), contributions,
        np.zeros(0, np.int64), 0,
    )


def test_record_window_keeps_the_latest_stage2_shares() -> None:
    m = AgentMetrics(sample_snapshot)
    m.record_window(_batch([STAGE_AUTOENCODER, STAGE_SCREEN], [0.5, np.nan], [True, True]), 0.25)
    # The newest window was screened: ratio 0, shares from the stage-2 window before it.
    assert m.latest.score_ratio == 0.0
    assert m.latest.alert is True
    assert m.latest.shares == pytest.approx((0.1, 0.9))
    m.record_window(_batch([STAGE_AUTOENCODER], [0.5], [False]), 0.25)
    assert m.latest.score_ratio == 2.0
    assert m.latest.alert is False
    assert m.latest.shares == pytest.approx((0.1, 0.9))
    before = m.latest
    m.record_window(_batch([], [], []), 0.25)
    assert m.latest is before  # a push that completed no window changes nothing
    m.record_window(_batch([STAGE_SCREEN], [np.nan], [False]), 0.25)
    assert m.latest.score_ratio == 0.0
    assert m.latest.shares == before.shares


def test_shares_of_another_model_are_not_shown_after_a_reload() -> None:
    m = AgentMetrics(sample_snapshot)  # two channels
    m.latest = LatestWindow(0.5, False, (0.2, 0.3, 0.5))  # three: the model before a reload
    port = m.serve(MetricsConfig(port=0))
    try:
        assert port is not None
        got = MetricsReader(MetricsConfig(port=port)).read(at=0.0)
    finally:
        m.close()
    assert got.shares == {"pressure_bar": 0.0, "oil_temp_c": 0.0}
    assert got.score_ratio == 0.5


def test_reader_over_https_with_basic_auth(tmp_path: Path) -> None:
    pki = write_pki(tmp_path)
    password = write_secret(tmp_path / "metrics.password", "s3cret: pass\n")
    cfg = MetricsConfig(
        port=0, username="viewer", password_file=password,
        tls=MetricsTlsConfig(certfile=pki.server_cert, keyfile=pki.server_key),
    )
    m = AgentMetrics(sample_snapshot)
    m.rows.inc(7)
    m.latest = LatestWindow(1.25, True, (0.4, 0.6))
    port = m.serve(cfg)
    try:
        assert port is not None
        served = cfg.model_copy(update={"port": port})
        got = MetricsReader(served).read(at=0.0)
        wrong = write_secret(tmp_path / "wrong.password", "nope")
        with pytest.raises(ScrapeError, match=r"https://127\.0\.0\.1:\d+/metrics: HTTP 401"):
            MetricsReader(served.model_copy(update={"password_file": wrong})).read(at=0.0)
    finally:
        m.close()
    assert got.rows == 7
    assert got.score_ratio == 1.25
    assert got.alert is True
    assert got.shares == pytest.approx({"pressure_bar": 0.4, "oil_temp_c": 0.6})
    assert got.faulty == ["oil_temp_c"]
    assert got.outbox_depth == 3
    assert got.mqtt_connected is True
    assert got.model_version == "m-1"


def test_reader_names_the_url_when_nothing_listens(tmp_path: Path) -> None:
    m = AgentMetrics(sample_snapshot)
    port = m.serve(MetricsConfig(port=0))
    m.close()  # the port was free a moment ago: nothing listens there now
    with pytest.raises(ScrapeError, match=rf"http://127\.0\.0\.1:{port}/metrics: .*refused"):
        MetricsReader(MetricsConfig(port=port)).read(at=0.0)
