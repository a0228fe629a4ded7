"""The run record: what ``trainer fit`` writes to ``run.json`` and ``export``/``evaluate`` read.

One typed model shared by the desk stages, between training (``trainer.fit``) and packing
(``export.bundle``) or scoring a float run (``trainer.evaluate.run``). The sections a bundle
manifest also carries (channels, sampling, window, forest, threshold, alerts) reuse the
manifest's own models, so a run that validates here packs into a manifest that validates
there. Unknown keys are rejected: a run.json from another trainer version fails loudly, naming
the field, instead of being half read.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from edge_agent.bundle.manifest import (
    ChannelSpec,
    ForestSpec,
    SamplingSpec,
    TrainingSpec,
    WindowSpec,
)
from edge_agent.config.strict import StrictModel
from edge_agent.detect.alerts import AlertPolicy
from edge_agent.detect.baseline import LevelBaseline
from edge_agent.detect.threshold import ThresholdModel
from trainer.config import TrainConfig

RUN_FILE = "run.json"
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"


class AutoencoderTraining(StrictModel):
    """How the float autoencoder was trained (informational, except ``kind``)."""

    kind: str = Field(description="Architecture (dense, conv or lstm); the bundle records it")
    epochs_run: int = Field(ge=0, description="Epochs run before early stopping")
    rare_window_epochs_run: int = Field(
        default=0, ge=0, description="Epochs of the second pass weighted towards rare windows"
    )
    quantization_aware_epochs_run: int = Field(
        default=0, ge=0, description="Epochs of fine-tuning through int8 rounding"
    )
    final_loss: float = Field(
        description="Training loss (MSE of normalized values), first pass's last epoch"
    )
    best_val_loss: float = Field(
        description="Lowest validation loss (plain MSE) of the last pass; its weights were kept"
    )
    device: str = Field(description="Where TensorFlow trained: GPU or CPU")
    tensorflow: str = Field(description="TensorFlow version that trained the model")
    parameters: int = Field(ge=0, description="Trainable and other parameters of the model")


class ValidationSummary(StrictModel):
    """The float model on held-out normal windows and on labelled or synthetic anomalies."""

    windows: int = Field(ge=0, description="Held-out normal windows (threshold calibration)")
    false_alarm_rate: float = Field(
        ge=0, le=1, description="Share of held-out normal windows at or above the alert threshold"
    )
    screened_fraction: float = Field(
        ge=0, le=1, description="Share of held-out normal windows the forest sends to stage 2"
    )
    positives: int = Field(ge=0, description="Anomalous windows (synthetic plus labelled)")
    stage2_recall: float = Field(
        ge=0, le=1, description="Share of anomalous windows the autoencoder alone alerts on"
    )
    cascade_recall: float = Field(
        ge=0, le=1, description="Share of anomalous windows alerted on behind the forest screen"
    )


class FederationSummary(StrictModel):
    """How a run made by ``trainer federate`` came from its base run (fleet learning)."""

    round_id: str = Field(description="Federated round the gateways' deltas belong to")
    clients_accepted: int = Field(ge=1, description="Gateway deltas aggregated into this run")
    clients_refused: int = Field(ge=0, description="Gateway deltas refused (federate.json: why)")
    samples: int = Field(ge=0, description="Local training windows summed over accepted deltas")
    rule: str = Field(description="Aggregation rule: fedavg, trimmed_mean or median")
    server_opt: str = Field(description="Server optimizer: none, avgm or adam")
    base_fingerprint: str = Field(
        pattern=SHA256_HEX_PATTERN, description="Weights fingerprint of the base run's model"
    )
    weights_fingerprint: str = Field(
        pattern=SHA256_HEX_PATTERN, description="Weights fingerprint of this run's model"
    )
    dp_noise_multipliers: list[float] = Field(
        default_factory=list, description="Central-DP noise multiplier of every federated "
        "round of this run's lineage, this one last (0: no noise); accounted in federate.json"
    )


class RunRecord(StrictModel):
    """Everything a run directory says about its models besides the model files themselves."""

    trainer_version: str = Field(description="edge_anomaly version that trained the run")
    seed: int = Field(description="Random seed of the forest, the autoencoder and the split")
    config: TrainConfig = Field(description="Training settings used (defaults filled in)")
    source: str = Field(description="Path of the history file trained on, as given")
    rows: int = Field(ge=0, description="Rows of history read (before the grid)")
    history_samples: int = Field(
        ge=0, description="Grid points of history; sets how much threshold margin applies"
    )
    threshold_margin: float = Field(
        ge=1, description="Multiplier applied on top of the calibrated threshold"
    )
    data_fingerprint: str = Field(
        pattern=SHA256_HEX_PATTERN, description="SHA-256 of the channel names and samples"
    )
    channels: list[ChannelSpec] = Field(
        min_length=1, description="Model channels in order, with their normalization"
    )
    sampling: SamplingSpec = Field(description="Sample period and gap rules of the grid")
    window: WindowSpec = Field(description="Window length, device hop and feature-set version")
    forest: ForestSpec = Field(description="Stage-1 forest file, size and screen threshold")
    autoencoder: AutoencoderTraining = Field(description="Stage-2 architecture and its training")
    threshold: ThresholdModel = Field(description="Float model's calibrated alert threshold")
    alerts: AlertPolicy = Field(description="Hysteresis from window decisions to alert state")
    validation: ValidationSummary = Field(description="Held-out figures of the float model")
    fit_seconds: float = Field(ge=0, description="Wall time of the whole fit, in seconds")
    baseline: LevelBaseline | None = Field(
        default=None, description="Channels judged against an adapting level (trending ones)"
    )
    federation: FederationSummary | None = Field(
        default=None, description="Set on runs made by `trainer federate`: round and base model"
    )

    def training_spec(self, *, sources: list[str] | None = None) -> TrainingSpec:
        """Provenance for a manifest; ``sources`` defaults to the history file's name."""
        return TrainingSpec(
            data_fingerprint=self.data_fingerprint,
            rows=self.rows,
            sources=sources if sources is not None else [Path(self.source).name],
            seed=self.seed,
            trainer_version=self.trainer_version,
        )

    def to_json(self) -> str:
        """``run.json``'s text: the same keys, order and layout as before the typed record.

        ``json.dumps`` rather than pydantic's serializer, which writes a non-finite loss as
        ``null`` (unreadable as a float) where ``json`` writes ``NaN`` (read back as NaN).
        """
        # A fitted run has no federation key at all, so its run.json stays as it was.
        skip = {"federation"} if self.federation is None else set()
        return json.dumps(self.model_dump(mode="json", exclude=skip), indent=2) + "\n"
