"""Reading a verified bundle's float training weights (``train_weights.npz``) on the gateway.

Pipeline position: fleet learning, after ``edge_agent.bundle.verify.verify_bundle`` has checked
the signature and every file hash. The weights become the global starting point of a local
round (``edge_agent.learn.local``) and the base a delta is taken against. ``export`` writes the
file (``export.train_weights``); only bundles of the ``dense`` kind carry it.

The file is read again without following links and its hash checked against the signed
manifest once more, so a file swapped between verification and this read is refused too. The
weights must chain into the manifest's ``learning.layers`` and map a window of
``window.length x channels`` back to itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edge_agent.bundle.manifest import Manifest
from edge_agent.fsutil import read_no_follow
from edge_agent.learn.dense import DenseAutoencoder
from edge_agent.learn.weights import WeightSet


def train_weights_from_bytes(data: bytes, manifest: Manifest) -> WeightSet | None:
    """The weights in ``data`` (the bundle's learning file); ``None`` when not trainable.

    ``ValueError`` naming the file when the bytes are not the signed file or not weights of
    the manifest's layers and window.
    """
    learning = manifest.learning
    if learning is None or not learning.trainable or learning.file is None:
        return None
    name = learning.file
    if hashlib.sha256(data).hexdigest() != manifest.files.get(name):
        raise ValueError(f"{name}: does not match its SHA-256 in the signed manifest")
    weights = WeightSet.from_npz_bytes(data, source=name)
    activations = [layer.activation for layer in learning.layers]
    try:
        DenseAutoencoder(weights, activations)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from exc
    units = [shape[1] for shape in weights.shapes[::2]]
    declared = [layer.units for layer in learning.layers]
    if units != declared:
        raise ValueError(f"{name}: layer widths {units} differ from learning.layers {declared}")
    values = manifest.window.length * len(manifest.channels)
    if weights.shapes[0][0] != values:
        raise ValueError(
            f"{name}: the model takes {weights.shapes[0][0]} values per window, the manifest's "
            f"window is {manifest.window.length} x {len(manifest.channels)} = {values}"
        )
    return weights


def load_train_weights(bundle_dir: Path, manifest: Manifest) -> WeightSet | None:
    """Read the learning file of the verified bundle in ``bundle_dir`` (never via a link).

    ``None`` when the bundle has no trainable weights (older bundles, conv/lstm kinds);
    ``ValueError`` naming the file when it is missing, a link, changed or malformed.
    """
    learning = manifest.learning
    if learning is None or not learning.trainable or learning.file is None:
        return None
    try:
        data = read_no_follow(bundle_dir, learning.file)
    except OSError as exc:
        raise ValueError(f"{bundle_dir / learning.file}: cannot read ({exc})") from exc
    return train_weights_from_bytes(data, manifest)
