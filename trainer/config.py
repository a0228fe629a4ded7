"""Training settings: one strict model, loadable from TOML, with defaults that work on real data.

The defaults were chosen on SKAB (400 rows of history per machine, 1 s samples) and the plant
simulator, and scale to millions of rows by striding the training windows (``max_windows``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edge_agent.detect.alerts import AlertPolicy
from edge_agent.detect.threshold import ErrorStatistic
from edge_agent.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    period_s: float | None = Field(
        default=None, gt=0, description="Model sample period in s; default: the median time step"
    )
    max_ffill: int = Field(default=5, ge=0, description="Gaps up to this many samples are held")
    max_hold: int = Field(
        default=30, ge=0, description="Longer gaps (samples) start a new segment on the device"
    )
    max_imputed_fraction: float = Field(
        default=0.25, ge=0, le=1, description="Windows with more imputed cells are not scored"
    )
    scale_floor: float = Field(
        default=0.01,
        gt=0,
        description="Smallest per-channel scale, relative to |mean| (1 % is a typical sensor "
        "accuracy class), so a channel that was flat in a short history does not turn every "
        "later wiggle into an anomaly",
    )


class WindowConfig(_Strict):
    # A window that holds a fault's last sample is abnormal for ``length - 1`` samples after
    # the fault ends. At 32 samples that tail was 620 of the simulator's 664 false rows (seeds
    # 21/22). At 16 the same histories gave F1 0.650 and 0.658 on seeds 21/22 and 31/32,
    # against 0.564 and 0.524, and drifts were found sooner (median 65 s against 110 s). On
    # SKAB F1 fell 0.759 to 0.756, FAR 10.6 % to 9.8 %, every file exported to int8 (other/12
    # was refused at 32), and NAB fell 32.51 to 32.02 (bench/results, README "Window length").
    length: int = Field(default=16, ge=4, le=1024, description="Samples per window")
    hop: int = Field(default=1, ge=1, description="Samples between scored windows on the device")
    max_windows: int = Field(
        default=60_000, ge=100, description="Training windows kept (strided evenly beyond this)"
    )


class ForestConfig(_Strict):
    n_trees: int = Field(default=100, ge=10, le=1000)
    max_samples: int = Field(default=256, ge=16)
    envelope: bool = Field(
        default=True,
        description="Also send to stage 2 every window with a feature outside the range the "
        "training windows showed (edge_agent.detect.envelope); false screens on the forest alone",
    )
    residual: bool = Field(
        default=True,
        description="Also send to stage 2 every window the principal subspace of normal "
        "windows reconstructs worse than residual_quantile of the training windows "
        "(edge_agent.detect.residual)",
    )
    residual_explained: float = Field(
        default=0.995,
        gt=0,
        lt=1,
        description="Share of the training windows' variance the subspace keeps",
    )
    # With spe_quantile 0.995, on the simulator's fresh stretches (seeds 22, 23, 24) 9.3 %,
    # 9.2 % and 8.0 % of windows reach stage 2 and 98.4 %, 99.0 % and 98.8 % of stage 2's
    # recall are kept; 0.95 without the SPE edge sent 11 % and kept 95.6 % on seed 22.
    residual_quantile: float = Field(
        default=0.98,
        gt=0.5,
        lt=1,
        description="Quantile of the training windows' residual taken as the limit: about "
        "1 - this share of normal windows go on to stage 2 by this test",
    )
    # A short history never shows all of normal, to the screen's limits either: fitted on
    # SKAB's 400 rows, the envelope and the residual limit found 99 % of later windows new and
    # sent them all to stage 2. They get the headroom stage 2's threshold gets for a short
    # history, fading faster as it grows (trainer.fit.screen_headroom), each on its own
    # scale: the envelope's half-widths and the residual limit.
    limits_follow_margin: bool = Field(
        default=True,
        description="Widen the envelope's edges and raise the residual limit by the threshold's "
        "short-history margin (threshold.margin up to threshold.margin_full_below samples, "
        "fading as the history grows); false: the limits are what the training windows showed",
    )
    spe_quantile: float = Field(
        default=0.995,
        ge=0.5,
        le=1,
        description="Upper envelope edge of a window's mean sample SPE (the channels' relation "
        "broken), as a quantile of the training windows' (1: their maximum)",
    )


class AutoencoderConfig(_Strict):
    # dense beat conv on SKAB's 400-row histories at the FAR limit (bench/skab_sweep.py).
    kind: Literal["cnn_lstm_attn", "conv", "dense", "lstm"] = "dense"
    epochs: int = Field(default=80, ge=1)
    batch_size: int = Field(default=64, ge=1)
    learning_rate: float = Field(default=1e-3, gt=0)
    patience: int = Field(default=10, ge=1, description="Epochs without improvement before stop")
    # A start, a stop or a valve stroke is normal but rare: a few % of the windows, which a
    # plain mean-squared loss learns least. On the simulator's 2-day history they formed a
    # second mode of the held-out errors, above the alert threshold: every start and stop of
    # the compressor raised an alert. A second pass that weighs each window by its error after
    # the first (errors at or under the median weigh 1) learns them too; how it was chosen is
    # in trainer.fit.rare_window_weights.
    rare_window_epochs: int | None = Field(
        default=None,
        ge=0,
        description="Epochs of a second pass weighted towards the windows the first pass "
        "reconstructed worst (rare normal patterns such as starts and stops); default: half "
        "of epochs; 0: off",
    )

    def rare_pass_epochs(self) -> int:
        return self.epochs // 2 if self.rare_window_epochs is None else self.rare_window_epochs

    # export rounds the model to int8 and refuses one whose int8 copy loses what float finds;
    # a few epochs trained through that rounding (trainer.quant_aware) keep the two together.
    quantization_aware_epochs: int | None = Field(
        default=None,
        ge=0,
        description="Epochs of fine-tuning through int8 rounding after training, so the "
        "int8 model export makes reconstructs as the float one does (dense kind); default: "
        "an eighth of epochs (10 of 80); 0: off",
    )

    def quantization_aware_pass_epochs(self) -> int:
        if self.quantization_aware_epochs is None:
            return self.epochs // 8
        return self.quantization_aware_epochs

    validation_fraction: float = Field(
        default=0.2, gt=0, lt=0.9, description="Latest share of history held out for calibration"
    )


class ThresholdConfig(_Strict):
    method: Literal["pot", "percentile"] = "pot"
    # A fault usually lives in one or two of C channels; in the mean over all channels it counts
    # C times less than the same error spread over all, in the worst channel's mean it counts
    # whole. Measured with everything else default (README, "A window's error by its worst
    # channel"): the simulator is unchanged (F1 0.671 against 0.673, every kind as before) and
    # SKAB gains 0.049 of F1 at a FAR still under the published limit (0.805 at 12.65 %).
    statistic: ErrorStatistic = Field(
        default="channel_max",
        description="A window's error: mean (squared error over all samples and channels) or "
        "channel_max (its worst channel's; a one-channel fault is not diluted by the others)",
    )
    percentile: float = Field(default=99.5, gt=50, lt=100, description="For method=percentile")
    pot_level: float = Field(
        default=0.9,
        gt=0.5,
        lt=1,
        description="Quantile of normal errors where the GPD tail starts at the lowest; with "
        "many held-out windows it starts higher (trainer.calibrate.POT_TAIL_WINDOWS)",
    )
    risk: float = Field(
        default=1e-3, gt=0, lt=0.5, description="For method=pot: P(error >= threshold | normal)"
    )
    # A short history never shows all of normal: machines drift (temperature, wear) after
    # it ends. 2.25x the calibrated error kept SKAB's false-alarm rate near 13 % on 400-sample
    # histories. A longer history has shown more of normal and needs less headroom, so the
    # margin shrinks towards 1 as the history grows past margin_full_below samples.
    margin: float = Field(
        default=2.25,
        ge=1.0,
        description="Threshold multiplier on top of the calibrated value, for short histories",
    )
    margin_full_below: int = Field(
        default=1000,
        ge=1,
        description="History length (samples) up to which the full margin applies; beyond, "
        "the extra (margin - 1) shrinks in proportion to margin_full_below / length",
    )

    def effective_margin(self, history_samples: int) -> float:
        share = min(1.0, self.margin_full_below / max(history_samples, 1))
        return 1.0 + (self.margin - 1.0) * share


ADAPT_CHOICES = ("trending", "all", "none")


class BaselineConfig(_Strict):
    """Which channels are judged against a slowly adapting level on the gateway
    (``edge_agent.detect.baseline``), and how slowly it adapts."""

    adapt: str | list[str] = Field(
        default="trending",
        description="trending: the channels whose history trends (the same rule as trainer "
        "fit's drift warning); all; none (every channel keeps its training level); or a list "
        "of channel names",
    )

    @field_validator("adapt")
    @classmethod
    def _known_choice(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, str) and v not in ADAPT_CHOICES:
            raise ValueError(
                f"must be one of {', '.join(map(repr, ADAPT_CHOICES))} or a list of channel names"
            )
        return v

    # Normal drift is thermal and slow (hours); faults worth an alarm move in seconds to
    # minutes. 15 minutes follows a warm-up (SKAB's rig, 2 degC in 2 h, lags by under one
    # spread) while 93 % of a step still shows after a minute and 72 % after five.
    time_constant_s: float = Field(
        default=900.0, gt=0, description="Time constant of the adapting level, s"
    )
    max_step: float = Field(
        default=2.0,
        gt=0,
        description="Largest deviation (training spreads) one sample feeds into the level: "
        "bounds how fast any fault can be absorbed",
    )
    max_offset: float = Field(
        default=12.0,
        gt=0,
        description="Farthest (training spreads) a level may move from the training mean",
    )


class CascadeConfig(_Strict):
    keep_recall: float = Field(
        default=0.98, gt=0, le=1, description="Share of stage-2 recall the screen must keep"
    )


# What ``trainer fit`` writes into a bundle's ``alerts`` (the fields and their meaning:
# ``edge_agent.detect.alerts.AlertPolicy``, whose own defaults are what a manifest without a
# key has always meant). The deadband and the short close were chosen together on SKAB and two
# simulator seed pairs (README, *Alert deadband*): the deadband keeps a fault's alert open
# through its quieter windows, which an off-delay of 10 windows had done at the cost of a
# longer tail after each fault.
DEFAULT_ALERTS = AlertPolicy(open_after=3, close_after=5, hold_ratio=0.6)


class TrainConfig(_Strict):
    data: DataConfig = DataConfig()
    window: WindowConfig = WindowConfig()
    forest: ForestConfig = ForestConfig()
    autoencoder: AutoencoderConfig = AutoencoderConfig()
    threshold: ThresholdConfig = ThresholdConfig()
    cascade: CascadeConfig = CascadeConfig()
    baseline: BaselineConfig = BaselineConfig()
    alerts: AlertPolicy = DEFAULT_ALERTS

    @field_validator("alerts", mode="before")
    @classmethod
    def _alerts_over_defaults(cls, value: object) -> object:
        """An ``[alerts]`` table changes the keys it names; the others keep fit's defaults."""
        return {**DEFAULT_ALERTS.model_dump(), **value} if isinstance(value, dict) else value


def load_config(path: Path | None) -> TrainConfig:
    if path is None:
        return TrainConfig()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    try:
        return TrainConfig.model_validate(doc)
    except ValidationError as exc:
        lines = [f"{path}: {len(exc.errors())} problem(s):"]
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("\n".join(lines)) from None
