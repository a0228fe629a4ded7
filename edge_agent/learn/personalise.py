"""Personalisation: this machine's own alert threshold for a shared global model.

Pipeline position: fleet learning, at the canary stage of an over-the-air update
(``edge_agent.ota.install`` calls the agent's hook) and whenever a model is swapped in (the
stored result is applied to it); ``replay --local-history`` and ``adapt`` do the same offline.

The rule. The trainer's threshold (``trainer.calibrate``: a percentile, or a POT tail at a
risk, times a margin) is scale-equivariant: errors s times larger give an s times larger
threshold. So when this machine's normal errors are the desk's calibration errors scaled by
s, the trainer's own rule applied here gives s x the manifest's threshold. s is estimated as
the ratio of one quantile (``[learn] personal_quantile``, 0.95 by default) of the candidate's
int8 reconstruction errors on this machine's buffered normal windows (the device's own
cascade, ``edge_agent.detect.cascade.reconstruction_error``) to the same quantile of the
desk's errors (the manifest's quantile table), clamped to the manifest's
``[learning.threshold_scale_min, threshold_scale_max]``. The whole threshold model is
scaled (table, tail, alert threshold), so ``p_anomaly`` stays consistent with the alert.
Fewer buffered windows than ``personal_min_windows``, or a bundle without a ``learning``
section (no bounds signed), keep the manifest's threshold, and the result says so.

Results are kept per model version in ``<state_dir>/learn/thresholds.json`` (atomic, durable),
so a restart or a rollback to a model already calibrated applies the same threshold.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Protocol

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.detect.cascade import Cascade, Reconstructor, reconstruction_error
from edge_agent.detect.threshold import ThresholdModel
from edge_agent.fsutil import atomic_write, read_no_follow

log = logging.getLogger("edge_agent.learn")

F32 = npt.NDArray[np.float32]
THRESHOLDS_FILE = "thresholds.json"  # under <state_dir>/learn/
MAX_KEPT = 8  # model versions remembered (the A/B slots and a few before)
FIGURE_DIGITS = 6

Source = Literal["local", "manifest"]
Figures = dict[str, float | int | str | bool | None]


class Tunable(Protocol):
    """A loaded model whose threshold can be set (``edge_agent.model_slot.ModelSlot``)."""

    manifest: Manifest
    cascade: Cascade

    def use_threshold(self, threshold: ThresholdModel) -> None: ...


@dataclass(frozen=True)
class LocalThreshold:
    """The threshold this machine uses for one model, and how it was found."""

    model_version: str
    source: Source  # local: calibrated here; manifest: the desk's threshold kept
    scale: float  # applied to the manifest's threshold model (1.0 for manifest)
    raw_scale: float | None  # the quantile ratio before clamping (None: not computed)
    windows: int  # buffered normal windows scored
    alert_threshold: float  # the result
    reason: str  # why this source, for reports and logs

    def figures(self) -> Figures:
        """For the OTA report's canary figures."""
        return {
            "threshold_source": self.source, "threshold_scale": round(self.scale, FIGURE_DIGITS),
            "threshold_raw_scale": (None if self.raw_scale is None
                                    else round(self.raw_scale, FIGURE_DIGITS)),
            "threshold_windows": self.windows,
            "alert_threshold": round(self.alert_threshold, FIGURE_DIGITS),
            "threshold_reason": self.reason,
        }


def calibrate(
    manifest: Manifest, autoencoder: Reconstructor, windows: F32, *, quantile: float,
    min_windows: int,
) -> LocalThreshold:
    """The local threshold of ``manifest``'s model (its int8 ``autoencoder``) from normal
    ``windows`` (N, W, C) of this machine; see the module docstring."""
    thr, n = manifest.threshold, int(windows.shape[0])
    if manifest.learning is None:
        return manifest_threshold(manifest, n, "the bundle signs no personalisation bounds "
                                  "(no learning section)")
    if n < min_windows:
        return manifest_threshold(manifest, n, f"{n} buffered normal windows, fewer than "
                                  f"{min_windows}")
    errors, _ = reconstruction_error(windows, autoencoder.reconstruct(windows), thr.statistic)
    desk = float(np.interp(quantile, thr.quantile_levels, thr.quantile_values))
    here = float(np.quantile(errors, quantile))
    if not (desk > 0 and np.isfinite(here) and here > 0):
        return manifest_threshold(manifest, n, f"no usable error quantile (desk {desk:.3g}, "
                                  f"here {here:.3g})")
    raw = here / desk
    lo, hi = manifest.learning.threshold_scale_min, manifest.learning.threshold_scale_max
    scale = float(min(max(raw, lo), hi))
    clamped = "" if scale == raw else f", clamped to [{lo:g}, {hi:g}]"
    return LocalThreshold(
        manifest.model_version, "local", scale, raw, n, thr.alert_threshold * scale,
        f"q{quantile:g} of {n} local errors / the desk's = {raw:.4g}{clamped}",
    )


def manifest_threshold(manifest: Manifest, windows: int, reason: str) -> LocalThreshold:
    """The desk's threshold kept, and why."""
    return LocalThreshold(manifest.model_version, "manifest", 1.0, None, windows,
                          manifest.threshold.alert_threshold, reason)


class ThresholdStore:
    """Local thresholds by model version, in ``<state_dir>/learn/thresholds.json``."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def get(self, model_version: str) -> LocalThreshold | None:
        entry = self._read().get(model_version)
        return None if entry is None else LocalThreshold(**entry)  # type: ignore[arg-type]

    def put(self, result: LocalThreshold) -> None:
        """Remember ``result`` (the newest :data:`MAX_KEPT` versions are kept)."""
        entries = self._read()
        entries.pop(result.model_version, None)
        entries[result.model_version] = asdict(result)
        kept = dict(list(entries.items())[-MAX_KEPT:])
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / THRESHOLDS_FILE, json.dumps(kept, indent=1).encode(),
                     mode=0o640)

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            raw = json.loads(read_no_follow(self.dir, THRESHOLDS_FILE))
            if not isinstance(raw, dict):
                raise ValueError("not a JSON object")
            for entry in raw.values():
                scale = LocalThreshold(**entry).scale  # checks the keys
                if not (isinstance(scale, float | int) and 0 < scale < np.inf):
                    raise ValueError(f"scale {scale!r}")
            return raw
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError) as err:
            log.warning("%s unreadable (%s): local thresholds start afresh",
                        self.dir / THRESHOLDS_FILE, err)
            return {}


class Personaliser:
    """The agent's side: calibrate a candidate model (the OTA canary's hook, updater thread)
    and apply stored thresholds to models as they are loaded (any thread). Never raises."""

    def __init__(self, store: ThresholdStore, windows: Callable[[Manifest], F32], *,
                 quantile: float, min_windows: int, on_apply: Callable[[float], None]) -> None:
        self.store = store
        self._windows = windows
        self.quantile = quantile
        self.min_windows = min_windows
        self._on_apply = on_apply  # the running model's scale, for the gauge

    def calibrate(self, model: Tunable) -> Figures:
        """Calibrate ``model`` on the buffered windows, remember and apply the result."""
        m = model.manifest
        try:
            result = calibrate(m, model.cascade.autoencoder, self._windows(m),
                               quantile=self.quantile, min_windows=self.min_windows)
            self.store.put(result)
        except Exception as err:  # the update goes on with the desk's threshold
            log.exception("local threshold of %s failed; the manifest's is kept",
                          m.model_version)
            result = manifest_threshold(m, 0, f"calibration failed: {err!r}")
        log.info("model %s: alert threshold %.6g (%s: %s)", m.model_version,
                 result.alert_threshold, result.source, result.reason)
        self._use(model, result)
        return result.figures()

    def apply(self, model: Tunable, *, running: bool = False) -> None:
        """Give ``model`` its stored local threshold, if it has one."""
        try:
            stored = self.store.get(model.manifest.model_version)
        except Exception:
            log.exception("cannot read the local thresholds")
            stored = None
        if stored is not None:
            self._use(model, stored)
        if running:
            self._on_apply(1.0 if stored is None else stored.scale)

    @staticmethod
    def _use(model: Tunable, result: LocalThreshold) -> None:
        if result.source == "local":
            model.use_threshold(model.manifest.threshold.scaled(result.scale))
