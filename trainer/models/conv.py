"""Multi-scale dilated 1-D convolutional window autoencoder.

Pipeline position: trainer stage 2 (see ``trainer.models``). The trained model is
quantized by ``export.tflite_int8`` and run on the gateway by ``edge_agent``.

Design (after multi-scale dilated-convolution autoencoders published for IIoT
anomaly detection):

* Encoder: a multi-scale block (parallel Conv1D branches with kernels 3/5/7,
  concatenated and fused by a 1x1 conv, plus a residual projection of its input),
  then a stack of residual dilated convs (dilations 1/2/4/8) that widens the
  receptive field without pooling, then average pooling over time and a linear 1x1
  bottleneck conv of ``latent`` channels.
* Decoder mirrors it: nearest-neighbour upsampling, 1x1 conv, residual dilated stack
  (8/4/2/1), multi-scale block, linear 1x1 output conv to ``C`` channels.

Skip connections are *residual inside each block* only. A U-Net style skip from the
encoder to the decoder would carry the input around the bottleneck, letting the
model reconstruct anomalies as well as normal data, which defeats the purpose.

All convs use 'same' padding so every shape is static apart from the batch. In
TFLite the model becomes CONV_2D (dilated ones wrapped in SPACE_TO_BATCH_ND /
BATCH_TO_SPACE_ND), CONCATENATION, ADD, AVERAGE_POOL_2D, TILE (upsampling) and
reshapes, all with int8 kernels, so it converts to full int8 with a dynamic batch.
Its int8 output deviates from float more than the dense model's (about 4% of the
signal scale vs 0.3% in the export tests) because rounding compounds over 21 convs.
"""

from __future__ import annotations

import itertools

import keras

from trainer.models.common import compile_autoencoder, resolve_latent

KIND = "conv"

BRANCH_KERNELS = (3, 5, 7)  # parallel receptive fields of the multi-scale block
DILATIONS = (1, 2, 4, 8)  # doubling dilations: receptive field 31 steps with kernel 3
DILATED_KERNEL = 3
# Residual-branch kernels start at this fraction of their usual init variance, so each
# of the ten residual blocks starts near identity. Otherwise every add roughly doubles
# the activation variance: training starts from a huge loss and int8 calibration sees
# needlessly wide ranges.
RESIDUAL_INIT_SCALE = 0.1
RELU_INIT_SCALE = 2.0  # He normal: a relu zeroes half the variance
LINEAR_INIT_SCALE = 1.0  # LeCun normal
DEFAULT_FILTERS = 16  # ~13-15k parameters for C in 4..10
DEFAULT_LATENT = 4  # bottleneck channels, per downsampled time step
# Time is pooled by the largest power of two up to this that divides the window, so
# W=16, C=4 compresses 64 values to 4 steps x 4 channels = 16.
MAX_DOWNSAMPLE = 4


def downsample_factor(window: int) -> int:
    """Largest power of two <= ``MAX_DOWNSAMPLE`` dividing ``window`` (1 if odd)."""
    factor = MAX_DOWNSAMPLE
    while factor > 1 and window % factor != 0:
        factor //= 2
    return factor


def build_conv_autoencoder(
    window: int,
    channels: int,
    *,
    latent: int | None = None,
    seed: int = 0,
    filters: int = DEFAULT_FILTERS,
) -> keras.Model:
    """Build and compile (Adam + MSE) a multi-scale dilated conv autoencoder.

    ``latent`` is the number of bottleneck channels per pooled time step (default
    ``DEFAULT_LATENT``); ``seed`` fixes the initialisation.
    """
    latent_channels = resolve_latent(window, channels, latent, DEFAULT_LATENT)

    # Distinct seed per layer: a seeded Keras 3 initializer repeats its tensor.
    seeds = itertools.count(seed)
    names = itertools.count()

    def conv(
        units: int,
        kernel: int,
        *,
        dilation: int = 1,
        activation: str | None = "relu",
        residual: bool = False,
    ) -> keras.layers.Conv1D:
        # Variance-preserving start: He (2/fan_in) before a relu, LeCun (1/fan_in) for
        # linear convs. Using He everywhere doubled the variance at each of the five
        # linear convs and the untrained output came out ~4x the input's scale.
        init_scale = RELU_INIT_SCALE if activation == "relu" else LINEAR_INIT_SCALE
        if residual:
            init_scale *= RESIDUAL_INIT_SCALE
        return keras.layers.Conv1D(
            units,
            kernel,
            padding="same",
            dilation_rate=dilation,
            activation=activation,
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=init_scale, mode="fan_in", distribution="truncated_normal", seed=next(seeds)
            ),
            name=f"conv_{next(names)}",
        )

    def multi_scale(x: keras.KerasTensor) -> keras.KerasTensor:
        branches = [conv(filters, k)(x) for k in BRANCH_KERNELS]
        fused = conv(filters, 1, residual=True)(keras.layers.Concatenate(axis=-1)(branches))
        # Linear 1x1 projection so the residual add works when channel counts differ.
        shortcut = conv(filters, 1, activation=None)(x)
        return keras.layers.Add()([fused, shortcut])

    def dilated_stack(x: keras.KerasTensor, dilations: tuple[int, ...]) -> keras.KerasTensor:
        for d in dilations:
            branch = conv(filters, DILATED_KERNEL, dilation=d, residual=True)(x)
            x = keras.layers.Add()([x, branch])
        return x

    factor = downsample_factor(window)
    inputs = keras.Input(shape=(window, channels), name="window")

    x = multi_scale(inputs)
    x = dilated_stack(x, DILATIONS)
    if factor > 1:
        x = keras.layers.AveragePooling1D(pool_size=factor, name="downsample")(x)
    # Linear bottleneck: a relu here would waste half the code space on dead units.
    z = conv(latent_channels, 1, activation=None)(x)

    x = z
    if factor > 1:
        x = keras.layers.UpSampling1D(size=factor, name="upsample")(x)
    x = conv(filters, 1)(x)
    x = dilated_stack(x, tuple(reversed(DILATIONS)))
    x = multi_scale(x)
    outputs = conv(channels, 1, activation=None)(x)

    model = keras.Model(inputs, outputs, name=f"{KIND}_autoencoder")
    compile_autoencoder(model)
    return model
