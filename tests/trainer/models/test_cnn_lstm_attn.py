"""The ``cnn_lstm_attn`` autoencoder kind (``trainer.models.cnn_lstm_attn``) end to end.

Chosen by config like the other kinds, trained briefly on the plant simulator's history
through the trainer's own preparation and training steps, converted by the project's full
int8 path (``export.tflite_int8``) and run in the gateway's interpreter
(``edge_agent.detect.autoencoder``): its reconstruction errors must stay close to the float
model's. Fleet learning must refuse it with the reason it gives conv and lstm.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.detect.autoencoder import Int8Autoencoder
from edge_agent.detect.windows import gather_windows
from edge_agent.interpreter import load_interpreter
from export.tflite_int8 import convert_int8, ops_with_float_tensors

KIND = "cnn_lstm_attn"
WINDOW = 32
TRAIN_WINDOWS = 512  # spread over the simulator's history
TEST_WINDOWS = 256
EPOCHS = 3
# Mean |int8 - Keras| over mean |input|: 0.012 measured here after 3 epochs (0.003-0.005
# on sine windows); the conv kind's bound is 0.08, the lstm kind's 0.02.
MAX_REL_INT8_ERROR = 0.03
# The detector scores windows by their mean squared reconstruction error (+0.0005 measured).
MAX_REL_SCORE_ERROR = 0.05
MIN_SCORE_CORRELATION = 0.95
TRAIN_TOML = f"""
[window]
length = {WINDOW}
[autoencoder]
kind = "{KIND}"
epochs = {EPOCHS}
"""


@dataclass(frozen=True)
class Trained:
    model: Any
    windows: np.ndarray  # held-back windows, normalized
    keras_out: np.ndarray
    int8: bytes


@pytest.fixture(scope="module")
def trained(sim_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    from edge_agent.data.table import read_table
    from trainer.config import load_config
    from trainer.fit import prepare_history, train_autoencoder

    toml = tmp_path_factory.mktemp("cnn_lstm_attn") / "train.toml"
    toml.write_text(TRAIN_TOML)
    cfg = load_config(toml)
    assert cfg.autoencoder.kind == KIND
    prep = prepare_history(read_table(sim_csv, label_cols=["anomaly"]), cfg)
    normal = prep.ends[prep.window_labels == 0]
    picks = np.linspace(0, normal.size - 1, TRAIN_WINDOWS + TEST_WINDOWS).astype(int)
    windows = gather_windows(prep.xn, normal[picks], WINDOW)
    train_w, test_w = windows[::2][:TRAIN_WINDOWS], windows[1::2][:TEST_WINDOWS]
    model, info = train_autoencoder(train_w, test_w, cfg, seed=0)
    assert info["epochs_run"] >= 1
    keras_out = np.asarray(model.predict(test_w, verbose=0), dtype=np.float32)
    return Trained(model, test_w, keras_out, convert_int8(model, train_w))


def test_kind_is_built_by_config_name(trained: Trained) -> None:
    assert trained.model.name == f"{KIND}_autoencoder"
    assert trained.model.output_shape == (None, WINDOW, trained.windows.shape[2])
    layers = {type(layer).__name__ for layer in trained.model.layers}
    assert {"Conv1D", "LSTM", "Softmax", "Dot"} <= layers


def test_int8_model_is_full_integer_with_dynamic_batch(trained: Trained) -> None:
    assert ops_with_float_tensors(trained.int8) == []
    interpreter, _ = load_interpreter(trained.int8)
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()
    assert inp["dtype"] == np.int8
    assert out["dtype"] == np.int8
    assert list(inp["shape_signature"]) == [-1, WINDOW, trained.windows.shape[2]]


def test_int8_reconstruction_error_close_to_float(trained: Trained) -> None:
    x, ref = trained.windows, trained.keras_out
    got = Int8Autoencoder(trained.int8).reconstruct(x)
    assert got.shape == x.shape
    rel = float(np.mean(np.abs(got - ref)) / np.mean(np.abs(x)))
    print(f"{KIND}: int8 vs float reconstruction {rel:.4f} of the input's scale")
    assert rel < MAX_REL_INT8_ERROR, f"{rel:.4f}"
    err_float = np.mean((ref - x) ** 2, axis=(1, 2))
    err_int8 = np.mean((got - x) ** 2, axis=(1, 2))
    score_gap = abs(float(err_int8.mean()) / float(err_float.mean()) - 1.0)
    print(f"{KIND}: mean window error int8 vs float {score_gap:+.4f}")
    assert score_gap < MAX_REL_SCORE_ERROR, f"{score_gap:.4f}"
    assert np.corrcoef(err_float, err_int8)[0, 1] > MIN_SCORE_CORRELATION


def test_fleet_learning_refuses_the_kind(trained: Trained) -> None:
    from export.train_weights import learning_files

    spec, files = learning_files(trained.model, KIND)
    assert not spec.trainable
    assert files == {}
    assert f"the {KIND} kind is not trainable on the device" in (spec.reason or "")
    assert "trainable kinds: dense" in (spec.reason or "")


def test_unknown_kind_is_rejected_by_config(tmp_path: Path) -> None:
    from edge_agent.errors import ConfigError
    from trainer.config import load_config

    toml = tmp_path / "bad.toml"
    toml.write_text(TRAIN_TOML.replace(KIND, "cnn_lstm_attention"))
    with pytest.raises(ConfigError, match=f"autoencoder.kind: .*'{KIND}'"):
        load_config(toml)
