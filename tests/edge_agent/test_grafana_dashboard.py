"""docs/grafana/edge-agent-dashboard.json against the agent's real /metrics.

Every metric a panel (or the gateway variable) queries must be a sample name the endpoint
serves, with the exposition suffixes Prometheus stores (``_total``, ``_bucket``, ``_sum``,
``_count``): a renamed counter otherwise leaves an empty panel nobody notices. Every family
the agent serves must be on some panel, so a new metric cannot go unseen. The scrape is a real
:class:`edge_agent.metrics.AgentMetrics` endpoint over HTTP, fed the shared sample snapshot and
one observation of each labelled counter and histogram, so every family has samples.

The JSON itself is checked as Grafana needs it: unique panel ids, a title and the datasource
variable on every panel and query, unique refIds, panels inside the 24-column grid without
overlap, and every selector filtered by the ``$instance`` variable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_metrics_endpoint import REPO, scrape, serving

from edge_agent.learn.report import LearnMetrics
from edge_agent.ota.report import OtaMetrics

DASHBOARD = REPO / "docs" / "grafana" / "edge-agent-dashboard.json"
GRID_COLUMNS = 24
MIN_SCHEMA_VERSION = 36  # Grafana 9.x; 38 and up are Grafana 10
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
METRIC = re.compile(r"\bedge_agent_[a-z0-9_]+")
# A selector on a metric must carry the gateway filter first, so the picker applies everywhere.
INSTANCE_FILTER = '{instance=~"$instance"'
BY_CLAUSE = re.compile(r"\bby\s*\(([^)]*)\)")
LEGEND_LABEL = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")
# Labels Prometheus adds to every scraped series, and the bucket bound of histogram_quantile.
TARGET_LABELS = {"instance", "job"}
BUCKET_LABEL = "le"
# The exposition's creation-time samples; no panel needs them.
CREATED = "_created"


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def _panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the panels inside collapsed rows."""
    for panel in dash["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _queries(dash: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """(where, PromQL, legend) for every panel query and the query variables."""
    for panel in _panels(dash):
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"], target.get("legendFormat", "")
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            yield f"variable ${var['name']}", var["query"]["query"], ""


@dataclass
class Served:
    labels: dict[str, set[str]]  # sample name → the label names it carries
    families: dict[str, set[str]]  # family → its sample names


@pytest.fixture
def served() -> Served:
    """What a live endpoint serves once every labelled counter and histogram has samples."""
    with serving() as serve:
        endpoint = serve()
        m = endpoint.metrics
        m.rows.inc(10)
        m.windows.inc(8)
        m.stage2.inc(2)
        m.events.labels("anomaly", "open").inc()
        m.latency.observe(0.002)
        m.refused.labels("busy").inc()
        ota = OtaMetrics(m.registry)  # registered as an agent with [ota] enabled does
        ota.show("active")
        ota.activated.inc()
        ota.rejected.inc()
        ota.rolled_back.inc()
        learn = LearnMetrics(m.registry)  # registered as an agent with [learn] enabled does
        learn.rounds.labels("sent").inc()
        learn.watch_buffer(lambda: 600.0, lambda: 20_000.0)
        status, _, body = scrape(endpoint.port)
    assert status == 200
    out = Served({}, {})
    for family in text_string_to_metric_families(body.decode()):
        if family.name.endswith(CREATED):  # the text format parses these as families of their own
            continue
        names = out.families.setdefault(family.name, set())
        for sample in family.samples:
            out.labels.setdefault(sample.name, set()).update(sample.labels)
            names.add(sample.name)
    return out


def test_every_metric_the_dashboard_queries_is_served(
    dashboard: dict[str, Any], served: Served
) -> None:
    queried = {(where, name) for where, expr, _ in _queries(dashboard)
               for name in METRIC.findall(expr)}
    missing = sorted(f"{where}: {name}" for where, name in queried if name not in served.labels)
    assert not missing, f"queried but not in /metrics: {missing}"


def test_every_family_the_agent_serves_has_a_panel(
    dashboard: dict[str, Any], served: Served
) -> None:
    queried = {name for _, expr, _ in _queries(dashboard) for name in METRIC.findall(expr)}
    unseen = sorted(fam for fam, names in served.families.items() if not names & queried)
    assert not unseen, f"served but on no panel: {unseen}"


def test_grouping_and_legend_labels_exist_on_the_queried_metrics(
    dashboard: dict[str, Any], served: Served
) -> None:
    wrong = []
    for where, expr, legend in _queries(dashboard):
        have = TARGET_LABELS | {BUCKET_LABEL} | set().union(
            *(served.labels.get(name, set()) for name in METRIC.findall(expr))
        )
        grouped = [label.strip() for clause in BY_CLAUSE.findall(expr)
                   for label in clause.split(",") if label.strip()]
        wrong += [f"{where}: by {label}" for label in grouped if label not in have]
        # An aggregation keeps only its by-labels: the legend can name nothing else.
        kept = set(grouped) if grouped else have
        wrong += [f"{where}: legend {{{{{label}}}}}" for label in LEGEND_LABEL.findall(legend)
                  if label not in kept]
    assert not wrong, f"labels the series do not have: {wrong}"


def test_every_selector_is_filtered_by_the_gateway_variable(dashboard: dict[str, Any]) -> None:
    unfiltered = [
        f"{where}: {expr[m.start():m.end() + len(INSTANCE_FILTER)]}"
        for where, expr, _ in _queries(dashboard) if not where.startswith("variable")
        for m in METRIC.finditer(expr)
        if not expr.startswith(INSTANCE_FILTER, m.end())
    ]
    assert not unfiltered, f"selectors without {INSTANCE_FILTER}}}: {unfiltered}"


def test_queries_have_balanced_brackets(dashboard: dict[str, Any]) -> None:
    pairs = {")": "(", "]": "[", "}": "{"}
    unbalanced = []
    for where, expr, _ in _queries(dashboard):
        stack: list[str] = []
        for ch in re.sub(r'"[^"]*"', '""', expr):  # brackets inside label values do not count
            if ch in "([{":
                stack.append(ch)
            elif ch in pairs and (not stack or stack.pop() != pairs[ch]):
                stack.append("unmatched " + ch)
                break
        if stack:
            unbalanced.append(f"{where}: {expr}")
    assert not unbalanced, unbalanced


def test_dashboard_model(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert dashboard["uid"]
    assert dashboard["title"]
    variables = {var["name"]: var for var in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["instance"]["type"] == "query"
    assert variables["instance"]["datasource"] == DATASOURCE
    assert "label_values(" in variables["instance"]["query"]["query"]


def test_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    panels = list(_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    graphs = [p for p in panels if p["type"] != "row"]
    assert graphs, "no panels"
    for p in panels:
        assert p["title"].strip(), f"panel {p['id']} has no title"
    for p in graphs:
        assert p["description"].strip(), f"{p['title']}: no description"
        assert p["datasource"] == DATASOURCE, f"{p['title']}: datasource {p['datasource']}"
        targets = p["targets"]
        assert targets, f"{p['title']}: no query"
        refs = [t["refId"] for t in targets]
        assert len(refs) == len(set(refs)), f"{p['title']}: duplicate refIds {refs}"
        for t in targets:
            assert t["datasource"] == DATASOURCE, f"{p['title']} {t['refId']}: datasource"
            assert t["expr"].strip(), f"{p['title']} {t['refId']}: empty query"


def test_panels_fit_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for p in dashboard["panels"]:  # collapsed rows' panels are laid out when expanded
        pos = p["gridPos"]
        assert min(pos["x"], pos["y"]) >= 0, p["title"]
        assert min(pos["w"], pos["h"]) > 0, p["title"]
        assert pos["x"] + pos["w"] <= GRID_COLUMNS, f"{p['title']} is wider than the grid"
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = p["title"]
