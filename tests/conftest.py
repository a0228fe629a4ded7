"""Shared fixtures: a simulated plant, a trained run, a key pair and a signed int8 bundle.

Training is the slow part, so one small run is made per session and shared; tests that need
their own model say so. Everything is real: real TensorFlow training, real int8 TFLite, real
Ed25519 signatures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from broker import mosquitto  # noqa: F401 (a real broker on an ephemeral port, any test)
from disk import small_disk  # noqa: F401 (a small tmpfs to fill up, any test)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
SKAB = ROOT.parent / "shared" / "datasets" / "skab" / "data"
# Small but real: enough rows for every fault kind, few epochs to keep CI fast.
SIM_ROWS = 12_000
FAST_TRAIN_TOML = """
[window]
length = 32
[autoencoder]
kind = "dense"
epochs = 12
"""


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def sim_csv(work: Path) -> Path:
    from edge_agent.simulator import simulate_plant

    path = work / "plant.csv"
    simulate_plant(rows=SIM_ROWS, seed=3).write_csv(path)
    return path


@pytest.fixture(scope="session")
def fast_config(work: Path) -> Path:
    path = work / "fast.toml"
    path.write_text(FAST_TRAIN_TOML)
    return path


@pytest.fixture(scope="session")
def trained_run(work: Path, sim_csv: Path, fast_config: Path) -> Path:
    from trainer.cli import main

    out = work / "run"
    # Train on the fault-free warm-up part only, as an engineer would with known-good history.
    assert (
        main(
            [
                "fit",
                "--data",
                str(sim_csv),
                "--out",
                str(out),
                "--label-col",
                "anomaly",
                "--config",
                str(fast_config),
                "--seed",
                "1",
            ]
        )
        == 0
    )
    return out


@pytest.fixture(scope="session")
def keys(work: Path) -> Path:
    from export.cli import main

    kd = work / "keys"
    assert main(["keygen", "--out", str(kd)]) == 0
    return kd


@pytest.fixture(scope="session")
def bundle(work: Path, trained_run: Path, keys: Path) -> Path:
    from export.cli import main

    out = work / "bundle"
    assert (
        main(
            [
                "bundle",
                "--run",
                str(trained_run),
                "--out",
                str(out),
                "--key",
                str(keys / "signing.key"),
                "--variants",
                "none",
            ]
        )
        == 0
    )
    return out
