"""The bundle manifest: everything the gateway needs to run a model, and nothing it may guess.

Written by ``export``, read by ``replay`` and the daemon after the signature checks out
(``edge_agent.bundle.verify``). Unknown keys are rejected so that a manifest from a newer
schema fails loudly instead of being half understood.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from edge_agent.config.strict import StrictModel
from edge_agent.data.learned import LearnedLimits
from edge_agent.detect.alerts import AlertPolicy
from edge_agent.detect.baseline import LevelBaseline
from edge_agent.detect.threshold import ThresholdModel

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
# Personalisation bounds: a gateway may scale its alert threshold within these by default.
DEFAULT_THRESHOLD_SCALE_MIN = 0.8
DEFAULT_THRESHOLD_SCALE_MAX = 1.5


class ChannelSpec(StrictModel):
    name: str = Field(description="Sensor column / tag name, as in the training data")
    unit: str = Field(default="", description="Engineering unit, informational")
    mean: float = Field(description="Normalization: value subtracted")
    scale: float = Field(gt=0, description="Normalization: divisor after subtracting the mean")
    stuck_after: int | None = Field(
        default=None,
        ge=2,
        description="Identical readings in a row from which data quality calls the channel "
        "stuck, learned from the training history (edge_agent.data.repeats); none: not judged",
    )
    noisy_above: float | None = Field(
        default=None,
        gt=0,
        description="Noise level (median step of the last readings, in the channel's unit) "
        "above which data quality calls the channel noisy, learned from the training history "
        "(edge_agent.data.roughness); none: not judged",
    )
    jump_above: float | None = Field(
        default=None,
        gt=0,
        description="Step between consecutive readings (in the channel's unit) above which "
        "data quality calls a reading a jump, learned from the training history "
        "(edge_agent.data.jumps); none: not judged",
    )
    spike_above: float | None = Field(
        default=None,
        gt=0,
        description="Excursion (a reading that left the one before and came back at the next, "
        "the smaller of the two steps) above which data quality calls it a spike, learned from "
        "the training history (edge_agent.data.spikes); none: not judged",
    )


class SamplingSpec(StrictModel):
    period_s: float = Field(gt=0, description="Model sample period in seconds")
    max_hold: int = Field(ge=0, description="Missing samples held before a segment restarts")
    max_imputed_fraction: float = Field(
        ge=0, le=1, description="Windows with more imputed cells than this are not scored"
    )


class WindowSpec(StrictModel):
    length: int = Field(ge=2, description="Samples per window")
    hop: int = Field(ge=1, description="Samples between scored windows on the device")
    feature_set: int = Field(description="Version of the window feature kernel")


class ForestSpec(StrictModel):
    file: str
    n_trees: int = Field(ge=1)
    max_samples: int = Field(ge=1)
    screen_threshold: float = Field(
        description="Screen score at or above which a window goes on to stage 2: the forest's "
        "score, or 1 + how far outside the envelope a window lies"
    )
    envelope: bool = Field(
        default=False,
        description="The forest file carries the training windows' feature ranges, and the "
        "screen score takes them in (bundles before it screened on the forest alone)",
    )
    residual: bool = Field(
        default=False,
        description="The forest file carries the normal windows' subspace and SPE limit "
        "(edge_agent.detect.residual), and the screen score takes them in",
    )


class AutoencoderSpec(StrictModel):
    file: str = Field(description="Full-integer int8 TFLite model")
    kind: str = Field(description="Architecture, e.g. conv or dense")
    input_dtype: Literal["int8"] = "int8"


class ParitySpec(StrictModel):
    """int8 against float on held-out windows (``export.parity``), as the gate saw it.

    The fields after ``forced`` came with the sized parity set; bundles exported before it
    lack them (``rule`` then reads ``alert_threshold``: unsized synthetic faults, which rarely
    reached the alert threshold, so their F1 is often 0 for both models).
    """

    windows: int = Field(description="Held-out windows compared")
    positives: int = Field(description="Anomalous windows among them")
    f1_float: float
    f1_int8: float
    auc_float: float
    auc_int8: float
    error_rel_mae: float = Field(description="Mean |int8 - float| error relative to float error")
    forced: bool = Field(default=False, description="Exported despite failing the parity gate")
    rule: Literal["alert_threshold", "own_alert_threshold_sized"] = Field(
        default="alert_threshold",
        description="How F1 was compared: each model at its own alert threshold, on synthetic "
        "faults as trainer fit made them (alert_threshold) or sized so the float model's "
        "errors straddle its threshold (own_alert_threshold_sized)",
    )
    synthetic: int | None = Field(
        default=None, description="Sized synthetic faults among positives"
    )
    labelled: int | None = Field(default=None, description="Labelled anomalous windows among them")
    sized_band: list[float] | None = Field(
        default=None, description="Float error / float alert threshold the sized faults aim at"
    )
    threshold_float: float | None = Field(default=None, description="Float alert threshold used")
    threshold_int8: float | None = Field(default=None, description="int8 alert threshold used")
    int8_worse: int | None = Field(
        default=None, description="Windows int8 judges wrongly and float rightly"
    )
    int8_better: int | None = Field(
        default=None, description="Windows float judges wrongly and int8 rightly"
    )
    int8_worse_p: float | None = Field(
        default=None, description="McNemar's exact one-sided p-value of int8_worse vs better"
    )
    max_f1_drop: float | None = Field(default=None, description="The gate's F1 limit")
    significance: float | None = Field(
        default=None, description="An F1 drop fails the gate only below this p-value"
    )
    max_auc_drop: float | None = Field(default=None, description="The gate's ROC-AUC limit")
    input_clipped_fraction: float | None = Field(
        default=None,
        description="Share of the held-out normal values outside the int8 input range",
    )


class TrainingSpec(StrictModel):
    data_fingerprint: str = Field(description="SHA-256 of the training samples and channel names")
    rows: int
    sources: list[str]
    seed: int
    trainer_version: str


class LearningLayerSpec(StrictModel):
    units: int = Field(ge=1, description="Output width of the dense layer")
    activation: Literal["relu", "linear"] = Field(description="Activation after the layer")


class LearningSpec(StrictModel):
    """Fleet learning (issue 11): whether and how the gateway may fine-tune this model.

    Only the ``dense`` kind is trainable on the device (``edge_agent.learn.dense``); for other
    kinds ``trainable`` is false, no weights file ships and ``reason`` says why.
    """

    kind: str = Field(description="Autoencoder kind the float weights belong to, e.g. dense")
    trainable: bool = Field(description="True when the gateway can train these weights")
    file: str | None = Field(
        default=None, description="Float32 weights (npz, WeightSet), listed in files"
    )
    layers: list[LearningLayerSpec] = Field(
        default_factory=list, description="Dense layers in order (input flattened W*C)"
    )
    reason: str = Field(default="", description="Why the model is not trainable on the device")
    threshold_scale_min: float = Field(
        default=DEFAULT_THRESHOLD_SCALE_MIN,
        gt=0,
        le=1,
        description="Lowest factor a gateway may apply to the alert threshold (personalisation)",
    )
    threshold_scale_max: float = Field(
        default=DEFAULT_THRESHOLD_SCALE_MAX,
        ge=1,
        description="Highest factor a gateway may apply to the alert threshold (personalisation)",
    )

    @model_validator(mode="after")
    def _trainable_has_weights(self) -> LearningSpec:
        if self.trainable and (self.file is None or not self.layers):
            raise ValueError("a trainable model needs its weights file and its layers")
        return self


class Manifest(StrictModel):
    schema_version: int
    model_version: str
    created_at: str
    channels: list[ChannelSpec]
    sampling: SamplingSpec
    window: WindowSpec
    forest: ForestSpec
    autoencoder: AutoencoderSpec
    threshold: ThresholdModel
    alerts: AlertPolicy
    training: TrainingSpec
    parity: ParitySpec
    variants: dict[str, dict[str, str | int | float | bool | None]] = Field(
        default_factory=dict, description="Accelerator variants: file names and build notes"
    )
    files: dict[str, str] = Field(description="SHA-256 (hex) of every other file in the bundle")
    learning: LearningSpec | None = Field(
        default=None, description="Fleet learning; absent in bundles exported before it"
    )
    baseline: LevelBaseline | None = Field(
        default=None,
        description="Channels judged against a slowly adapting level (those that trended in "
        "training); absent: every channel keeps its training level",
    )

    @model_validator(mode="after")
    def _references_resolve(self) -> Manifest:
        """The learning file is signed; the level baseline names channels of the model."""
        learning = self.learning
        if learning is not None and learning.file is not None and learning.file not in self.files:
            raise ValueError(f"learning.file {learning.file!r} is not listed in files")
        if self.baseline is not None:
            self.baseline.rates(self.channel_names, self.sampling.period_s)  # names checked
        return self

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def learned_limits(self) -> LearnedLimits:
        """The channels' learned data-quality limits, for the gateway and offline scoring."""
        return LearnedLimits(
            tuple(c.stuck_after for c in self.channels),
            tuple(c.noisy_above for c in self.channels),
            tuple(c.jump_above for c in self.channels),
            tuple(c.spike_above for c in self.channels),
        )
