"""``scripts/fleet-demo``'s loop, reduced: two gateways, a short desk history, one round.

Everything real: ``trainer fit`` and ``export bundle`` at the desk, a Mosquitto, two agent
processes with their own device keys and simulated compressors, ``trainer federate --broker
--publish`` announcing, collecting, aggregating, exporting and publishing; both gateways must
end on the new model with a threshold of their own.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEMO_TIMEOUT_S = 600


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists(),
                    reason="mosquitto is not installed")
def test_a_round_goes_from_the_gateways_to_the_desk_and_back_to_every_gateway(
    tmp_path: Path,
) -> None:
    out = tmp_path / "fleet"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fleet_demo.py"), "--out", str(out),
         "--gateways", "2", "--history-hours", "6", "--epochs", "10", "--rows", "10000",
         "--canary-s", "60", "--probation-s", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False,
    )  # fmt: skip
    logs = "\n".join(p.read_text()[-2000:] for p in out.glob("gateways/*/agent.log"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:] + logs
    report = json.loads((out / "desk" / "run-1" / "federate.json").read_text())
    assert report["accepted"] == 2
    assert {c["status"] for c in report["clients"]} == {"accepted"}
    new = json.loads((out / "desk" / "run-1.bundle" / "manifest.json").read_text())
    assert proc.stdout.count(f"active {new['model_version']}") >= 2
    for machine in ("compressor-01", "compressor-02"):
        state = out / "gateways" / machine / "state" / "learn" / "thresholds.json"
        assert new["model_version"] in state.read_text()
