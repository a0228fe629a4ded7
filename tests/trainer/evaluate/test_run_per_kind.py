"""trainer evaluate on the simulator's labelled CSV: metrics.json and the report per fault kind."""

from __future__ import annotations

import json
from pathlib import Path

from edge_agent.simulator import FAULT_KINDS


def test_evaluate_reports_each_fault_kind(
    bundle: Path, keys: Path, trained_run: Path, sim_csv: Path, tmp_path: Path
) -> None:
    from trainer.cli import main as trainer_main

    out = tmp_path / "eval"
    args = ["evaluate", "--bundle", str(bundle), "--trust", str(keys / "signing.pub")]
    args += ["--run", str(trained_run), "--data", str(sim_csv), "--out", str(out)]
    assert trainer_main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for pipeline in ("cascade", "stage2_alone"):
        records = metrics["per_kind"][pipeline]
        assert {r["kind"] for r in records} <= set(FAULT_KINDS)
        assert len(records) >= 3
        for r in records:
            assert 0 <= r["caught"] <= r["episodes"]
    cascade = metrics["cascade"]
    total = sum(r["episodes"] for r in metrics["per_kind"]["cascade"])
    assert total >= cascade["n_segments"]  # kinds back to back split a labelled segment
    assert "delay_p90_samples" in cascade
    html = (out / "report.html").read_text()
    assert "Detection per fault kind" in html
    assert f"<td>{metrics['per_kind']['cascade'][0]['kind']}</td>" in html
