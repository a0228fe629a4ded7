"""``export bundle`` ships the run's float weights for fleet learning, signed like every file.

Works on the session's real signed int8 bundle of a dense run and checks it with the gateway's
own gate (``verify_bundle``) and loader (``edge_agent.learn.bundle_weights``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_agent.bundle.manifest import LearningSpec, Manifest
from edge_agent.bundle.verify import verify_bundle
from edge_agent.errors import BundleError
from edge_agent.learn.bundle_weights import load_train_weights, train_weights_from_bytes
from edge_agent.learn.weights import WeightSet
from export.run_dir import load_run
from export.sign import sign_manifest
from export.train_weights import TRAIN_WEIGHTS_FILE, keras_weight_set, learning_files


@pytest.fixture
def copy(bundle: Path, tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(bundle, out)
    return out


def _verify(bundle_dir: Path, keys: Path) -> Manifest:
    return verify_bundle(bundle_dir, keys / "signing.pub").manifest


def test_bundle_weights_equal_the_keras_model(bundle: Path, keys: Path, trained_run: Path) -> None:
    verified = verify_bundle(bundle, keys / "signing.pub")
    learning = verified.manifest.learning
    assert learning is not None
    assert learning.trainable
    assert learning.kind == "dense"
    assert learning.file == TRAIN_WEIGHTS_FILE
    assert TRAIN_WEIGHTS_FILE in verified.manifest.files  # hashed and signed
    assert [layer.activation for layer in learning.layers] == ["relu", "relu", "relu", "linear"]
    model = load_run(trained_run).model
    expected = keras_weight_set(model)
    loaded = load_train_weights(verified.path, verified.manifest)
    assert loaded is not None
    assert loaded.names == expected.names
    assert loaded.names[:2] == ("dense_0/kernel", "dense_0/bias")
    assert all(np.array_equal(a, b) for a, b in zip(loaded.arrays, expected.arrays, strict=True))
    assert [layer.units for layer in learning.layers] == [s[1] for s in loaded.shapes[::2]]
    from_memory = train_weights_from_bytes(verified.files[TRAIN_WEIGHTS_FILE], verified.manifest)
    assert from_memory is not None
    assert from_memory.fingerprint() == expected.fingerprint()


def test_a_tampered_weights_file_fails_verification(copy: Path, keys: Path) -> None:
    weights = WeightSet.from_npz_bytes((copy / TRAIN_WEIGHTS_FILE).read_bytes())
    flat = weights.flat()
    flat[0] += 0.25
    (copy / TRAIN_WEIGHTS_FILE).write_bytes(WeightSet.from_flat(weights, flat).to_npz_bytes())
    with pytest.raises(BundleError, match=f"{TRAIN_WEIGHTS_FILE} does not match its SHA-256"):
        verify_bundle(copy, keys / "signing.pub")


def test_a_file_swapped_after_verification_is_refused(copy: Path, keys: Path) -> None:
    manifest = _verify(copy, keys)
    (copy / TRAIN_WEIGHTS_FILE).unlink()
    (copy / TRAIN_WEIGHTS_FILE).symlink_to(copy / "manifest.json")
    with pytest.raises(ValueError, match=f"{TRAIN_WEIGHTS_FILE}: cannot read"):
        load_train_weights(copy, manifest)
    (copy / TRAIN_WEIGHTS_FILE).unlink()
    (copy / TRAIN_WEIGHTS_FILE).write_bytes(b"PK not weights")
    with pytest.raises(ValueError, match="does not match its SHA-256 in the signed manifest"):
        load_train_weights(copy, manifest)


def test_signed_but_malformed_weights_are_named(copy: Path, keys: Path) -> None:
    (copy / TRAIN_WEIGHTS_FILE).write_bytes(b"not an npz")
    manifest = sign_manifest(copy, keys / "signing.key")  # the signer vouches for garbage
    _verify(copy, keys)
    with pytest.raises(ValueError, match=f"{TRAIN_WEIGHTS_FILE}: not a readable npz"):
        load_train_weights(copy, manifest)


def test_weights_that_do_not_fit_the_window_are_named(copy: Path, keys: Path) -> None:
    manifest = _verify(copy, keys)
    weights = load_train_weights(copy, manifest)
    assert weights is not None
    # Drop the last channel from the manifest: the weights no longer fit its windows.
    doc = json.loads((copy / "manifest.json").read_text())
    doc["channels"] = doc["channels"][:-1]
    fewer = Manifest.model_validate(doc)
    with pytest.raises(ValueError, match="values per window"):
        train_weights_from_bytes((copy / TRAIN_WEIGHTS_FILE).read_bytes(), fewer)
    learning = manifest.learning
    assert learning is not None
    swapped = [*learning.layers[:-1], learning.layers[0]]
    wider = manifest.model_copy(
        update={"learning": learning.model_copy(update={"layers": swapped})}
    )
    with pytest.raises(ValueError, match=r"layer widths .* differ from learning\.layers"):
        train_weights_from_bytes((copy / TRAIN_WEIGHTS_FILE).read_bytes(), wider)


def test_bundles_without_a_learning_section_stay_valid(copy: Path, keys: Path) -> None:
    doc = json.loads((copy / "manifest.json").read_text())
    del doc["learning"]
    del doc["files"][TRAIN_WEIGHTS_FILE]
    (copy / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    manifest = sign_manifest(copy, keys / "signing.key")
    assert _verify(copy, keys).learning is None
    assert load_train_weights(copy, manifest) is None


def test_a_learning_file_must_be_there_and_listed(bundle: Path, keys: Path) -> None:
    with pytest.raises(ValueError, match="needs its weights file and its layers"):
        LearningSpec(kind="dense", trainable=True, file=TRAIN_WEIGHTS_FILE)
    doc = _verify(bundle, keys).model_dump(mode="json")
    del doc["files"][TRAIN_WEIGHTS_FILE]
    with pytest.raises(ValueError, match=r"learning\.file .train_weights\.npz. is not listed"):
        Manifest.model_validate(doc)


def _tiny_models() -> dict[str, Any]:
    keras = pytest.importorskip("keras")
    from trainer.models.conv import build_conv_autoencoder
    from trainer.models.dense import build_dense_autoencoder

    inp = keras.Input((8, 3))
    x = keras.layers.Dense(4, activation="tanh")(keras.layers.Flatten()(inp))
    tanh = keras.Model(inp, keras.layers.Reshape((8, 3))(keras.layers.Dense(24)(x)))
    return {
        "conv": build_conv_autoencoder(8, 3, seed=0),
        "dense": build_dense_autoencoder(8, 3, latent=4, hidden=8, seed=0),
        "tanh": tanh,
    }


def test_only_plain_dense_models_are_trainable_on_the_device() -> None:
    models = _tiny_models()
    spec, files = learning_files(models["conv"], "conv")
    assert not spec.trainable
    assert files == {}
    assert spec.file is None
    assert "conv kind is not trainable on the device" in spec.reason
    spec, files = learning_files(models["tanh"], "dense")
    assert not spec.trainable
    assert "tanh" in spec.reason
    spec, files = learning_files(models["dense"], "dense")
    assert spec.trainable
    assert spec.threshold_scale_min == pytest.approx(0.8)
    assert spec.threshold_scale_max == pytest.approx(1.5)
    weights = WeightSet.from_npz_bytes(files[TRAIN_WEIGHTS_FILE])
    assert weights.fingerprint() == keras_weight_set(models["dense"]).fingerprint()
