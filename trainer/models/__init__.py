"""Autoencoder model registry for trainer stage 2 (after the Isolation Forest screen).

Every model maps a window of normalized sensor samples, float32 ``(W, C)``, to its
reconstruction of the same shape; the reconstruction error is the anomaly score. The
trainer builds one through :func:`build_autoencoder`, fits it, and hands it to
``export.tflite_int8`` for full-integer quantization before it ships to ``edge_agent``.
All kinds (dense, conv, lstm, cnn_lstm_attn) convert to full int8; see each module for its design.
"""

from __future__ import annotations

from typing import Protocol

import keras

from trainer.models.cnn_lstm_attn import build_cnn_lstm_attn_autoencoder
from trainer.models.conv import build_conv_autoencoder
from trainer.models.dense import build_dense_autoencoder
from trainer.models.lstm import build_lstm_autoencoder

__all__ = ["AUTOENCODER_BUILDERS", "AutoencoderBuilder", "build_autoencoder"]


class AutoencoderBuilder(Protocol):
    """Signature every registered builder shares; each returns a compiled model."""

    def __call__(
        self, window: int, channels: int, *, latent: int | None = None, seed: int = 0
    ) -> keras.Model: ...


# Explicit dict rather than import-time self-registration: the set of kinds is visible
# in one place and a typo in a config fails with the full list of valid names.
AUTOENCODER_BUILDERS: dict[str, AutoencoderBuilder] = {
    "dense": build_dense_autoencoder,
    "conv": build_conv_autoencoder,
    "lstm": build_lstm_autoencoder,
    "cnn_lstm_attn": build_cnn_lstm_attn_autoencoder,
}


def build_autoencoder(
    kind: str, window: int, channels: int, *, latent: int | None = None, seed: int = 0
) -> keras.Model:
    """Build the compiled (Adam + MSE) autoencoder of ``kind`` for ``(window, channels)``.

    The model is named ``"{kind}_autoencoder"`` so export errors can say which kind
    failed. Raises ``ValueError`` for an unknown kind, listing the known ones.
    """
    try:
        builder = AUTOENCODER_BUILDERS[kind]
    except KeyError:
        known = ", ".join(sorted(AUTOENCODER_BUILDERS))
        raise ValueError(f"unknown autoencoder kind {kind!r}; known kinds: {known}") from None
    return builder(window, channels, latent=latent, seed=seed)
