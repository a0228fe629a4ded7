"""``[learn]``: fleet learning on this gateway (issue 11), off by default.

Read by the agent (``edge_agent.agent``), which builds a :class:`~edge_agent.learn.learner.
Learner` when ``enabled``: the buffer of normal windows (``edge_agent.learn.buffer``), local
training when the desk announces a round (``edge_agent.learn.rounds``) or on a schedule, the
signed delta through the outbox, and the local alert threshold set when a new model arrives
(``edge_agent.learn.personalise``). The offline twin ``python -m edge_agent adapt`` reads the
same settings from its options. Validation is pure: the device key is only named here and
read when the agent starts. It imports nothing heavier than pydantic (``validate`` stays fast),
so the settings of a scheduled round are listed here rather than taken from
``edge_agent.learn.local.LocalTrainingConfig``, which the learner builds from them.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from edge_agent.config.strict import StrictModel
from edge_agent.learn.privacy_config import LocalPrivacyConfig

DEFAULT_DEVICE_KEY = Path("/etc/edge-agent/device.key")  # systemd/install.sh creates it
DEFAULT_NORMAL_SCORE_RATIO = 0.5
DEFAULT_CHUNK_ROWS = 600  # 10 min of rows at 1 s: one SD-card write per chunk
DEFAULT_SAMPLE_EVERY_S = 1800.0  # one chunk kept per half hour: days of spread, not the last hour
DEFAULT_MAX_MB = 16.0
DEFAULT_TOPK_FRACTION = 0.01
DEFAULT_MIN_WINDOWS = 100
DEFAULT_PERSONAL_MIN_WINDOWS = 50
DEFAULT_PERSONAL_QUANTILE = 0.95
DEFAULT_EPOCHS = 2
DEFAULT_BATCH_SIZE = 32
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_MAX_CPU_S = 300.0  # a round of 5,000 windows of 32 x 8 takes ~10 s on a Pi 4
DEFAULT_MAX_WINDOWS = 5_000  # 5,000 x 32 x 8 float32 = 5 MB held while training


class LearnConfig(StrictModel):
    """Fleet learning: buffer normal data, train on a round, send a signed delta."""

    enabled: bool = Field(
        default=False, description="Keep a buffer of normal windows, answer training rounds "
        "and calibrate local thresholds (needs [mqtt] and a device key)"
    )
    device_key: Path = Field(
        default=DEFAULT_DEVICE_KEY, description="This gateway's Ed25519 private key (PEM, "
        "mode 0600 or 0640) that signs its deltas; its public half is registered with the fleet"
    )
    normal_score_ratio: float = Field(
        default=DEFAULT_NORMAL_SCORE_RATIO, gt=0, le=1, description="A stage-2 window is "
        "normal enough to keep when its error is below this share of the alert threshold"
    )
    chunk_rows: int = Field(
        default=DEFAULT_CHUNK_ROWS, ge=2, le=1_000_000, description="Normal rows gathered in "
        "memory and written as one buffer file"
    )
    sample_every_s: float = Field(
        default=DEFAULT_SAMPLE_EVERY_S, ge=0, description="Seconds of sample time between the "
        "starts of two kept chunks (rows in between are not kept); 0: keep every chunk"
    )
    max_mb: float = Field(
        default=DEFAULT_MAX_MB, gt=0, description="Buffer size cap in MiB; over it the oldest "
        "chunk of the most common operating mode goes"
    )
    topk_fraction: float = Field(
        default=DEFAULT_TOPK_FRACTION, gt=0, le=1, description="Share of the delta's entries "
        "sent in a scheduled round (an announced round says its own)"
    )
    min_windows: int = Field(
        default=DEFAULT_MIN_WINDOWS, ge=1, description="Fewest buffered windows for a "
        "scheduled round (an announced round says its own)"
    )
    every_s: float | None = Field(
        default=None, gt=0, description="Also train on a schedule, every this many seconds, "
        "as round 'sched-<time>'; absent: only when the desk announces a round"
    )
    max_cpu_s: float = Field(
        default=DEFAULT_MAX_CPU_S, gt=0, description="CPU seconds (of the training thread) "
        "a round may use; it stops after the step that passes them and sends what it has"
    )
    max_windows: int = Field(
        default=DEFAULT_MAX_WINDOWS, ge=1, description="Windows a round trains on at most "
        "(an even subsample of the buffer): bounds the memory of training"
    )
    epochs: int = Field(
        default=DEFAULT_EPOCHS, ge=1, description="Local epochs of a scheduled round"
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE, ge=1, description="Windows per step in a scheduled round"
    )
    learning_rate: float = Field(
        default=DEFAULT_LEARNING_RATE, gt=0, description="Adam learning rate of a scheduled round"
    )
    prox_mu: float = Field(
        default=0.0, ge=0, description="FedProx proximal weight of a scheduled round (0: off)"
    )
    personalise: bool = Field(
        default=True, description="Calibrate this machine's alert threshold on its buffered "
        "normal windows when a new model arrives, within the manifest's bounds"
    )
    personal_min_windows: int = Field(
        default=DEFAULT_PERSONAL_MIN_WINDOWS, ge=20, description="Fewest buffered windows for "
        "a local threshold; fewer: the manifest's threshold, reported as such"
    )
    personal_quantile: float = Field(
        default=DEFAULT_PERSONAL_QUANTILE, gt=0, lt=1, description="Quantile of normal errors "
        "compared between this machine and the desk's calibration"
    )
    privacy: LocalPrivacyConfig = Field(
        default_factory=LocalPrivacyConfig, description="[learn.privacy]: clip the local "
        "update and add Gaussian noise before it is compressed (local differential privacy)"
    )

    @model_validator(mode="after")
    def _sane(self) -> LearnConfig:
        if self.every_s is not None and self.every_s < self.max_cpu_s:
            raise ValueError(
                f"every_s ({self.every_s:g}) is shorter than a round's CPU budget "
                f"max_cpu_s ({self.max_cpu_s:g})"
            )
        return self
