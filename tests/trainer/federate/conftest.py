"""Fixtures of the federate tests: the session run's weights as the round's base."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.learn.weights import WeightSet


@pytest.fixture(scope="module")
def base_weights(trained_run: Path) -> WeightSet:
    from export.run_dir import load_run
    from export.train_weights import keras_weight_set

    return keras_weight_set(load_run(trained_run).model)
