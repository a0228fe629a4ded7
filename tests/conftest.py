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
from built_once import built_once
from disk import small_disk  # noqa: F401 (a small tmpfs to fill up, any test)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Numba reads its thread count once per process and refuses a different one later; the bench
# scripts the smoke tests import pin it to 1 for their timings (setdefault), so it is pinned
# here for the whole session, before any test imports numba, whichever test a worker runs first.
os.environ.setdefault("NUMBA_NUM_THREADS", "1")

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
def trained_run(
    tmp_path_factory: pytest.TempPathFactory, sim_csv: Path, fast_config: Path
) -> Path:
    from trainer.cli import main

    with built_once(tmp_path_factory, "run") as (out, built):
        # Train on the fault-free warm-up part only, as an engineer would with known-good
        # history.
        if not built:
            args = ["fit", "--data", str(sim_csv), "--out", str(out), "--label-col", "anomaly",
                    "--config", str(fast_config), "--seed", "1"]  # fmt: skip
            assert main(args) == 0
    return out


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from export.cli import main

    with built_once(tmp_path_factory, "keys") as (kd, built):
        if not built:
            assert main(["keygen", "--out", str(kd)]) == 0
    return kd


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory, trained_run: Path, keys: Path) -> Path:
    from export.cli import main

    with built_once(tmp_path_factory, "bundle") as (out, built):
        if not built:
            args = ["bundle", "--run", str(trained_run), "--out", str(out),
                    "--key", str(keys / "signing.key"), "--variants", "none"]  # fmt: skip
            assert main(args) == 0
    return out
