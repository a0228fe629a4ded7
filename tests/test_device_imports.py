"""The gateway code path, replay included, never imports TensorFlow or scikit-learn."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import sys
# Make any import of the desk-only stacks fail loudly, as on a gateway without them.
for name in ("tensorflow", "sklearn", "keras", "scipy", "pandas", "matplotlib"):
    sys.modules[name] = None
from edge_agent.cli import main
code = main(["replay", "--bundle", sys.argv[1], "--data", sys.argv[2], "--out", sys.argv[3],
             "--trust", sys.argv[4]])
loaded = sorted(m for m in ("tensorflow", "sklearn", "keras", "scipy")
                if sys.modules.get(m) is not None)
print("LOADED", loaded)
sys.exit(code)
"""


def test_replay_runs_without_desk_stacks(
    bundle: Path, keys: Path, sim_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "scores.csv"
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            PROBE,
            str(bundle),
            str(sim_csv),
            str(out),
            str(keys / "signing.pub"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout
    assert out.stat().st_size > 0
