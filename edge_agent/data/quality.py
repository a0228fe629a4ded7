"""Per-channel data quality: implausible readings become missing values and sensor_fault events.

Sits between the sampler (which, every model sample period, takes each channel's latest
reading) and the pipeline's grid. A reading that is stale, NaN, out of range or stuck is
returned as NaN, so the grid holds the last good value and marks it imputed, exactly as the
trainer treats missing data: one broken sensor leads to unscored windows, not a false anomaly
of the machine. The fault itself is reported as a ``sensor_fault`` episode (open, update when
its reason changes, close after ``clear_samples`` good samples in a row).

Checks per channel, first match wins (the first is the most fundamental: a stale channel's
value is old, so judging its range or repetition would be meaningless):

* ``stale``: no fresh reading for more than ``stale_s``. A channel never read is missing but
  not judged until ``stale_s`` after the first call, so start-up is not a burst of faults.
* ``nan``: the source says it has no reading.
* ``range``: below ``min`` or above ``max``, or implausible for the model: more than
  ``IMPLAUSIBLE_SCALES`` training scales from its training mean (the ±3.4e38 "no reading" marker
  of float32 registers, ``1e39`` on a serial line). Such a value would overflow the model's
  float32 input, so this check applies to every channel, with or without ``min``/``max``.
* ``stuck``: the last ``stuck_samples`` *fresh* readings are identical. Only fresh readings
  count: a sensor polled slower than the sample period legitimately repeats its last value.
  Without a configured ``stuck_samples`` the model's learned limit applies (``stuck_after`` in
  the manifest, :mod:`edge_agent.data.repeats`: the same rule ``replay`` and ``trainer
  evaluate`` apply offline); a channel with neither is never judged stuck.
* ``noisy``: the channel's noise level (median step of its last readings,
  :mod:`edge_agent.data.roughness`) is above the model's learned ``noisy_above``. Reported,
  but the reading is kept: noise may be the machine's, and the model should see it.
* ``jump``: the reading is further than the model's learned ``jump_above`` from the one before
  and from the last one that was no jump (:mod:`edge_agent.data.jumps`). Reported and kept, as
  a noisy reading is.
* ``spike``: the *previous* reading left the one before it and came back at this one, both
  steps over the model's learned ``spike_above`` (:mod:`edge_agent.data.spikes`). Known one
  sample late, so reported then, with the event's ``start`` at the spike's own sample (counted
  then too: that sample was already counted good). Its reading was kept and scored.

The learned limits (stuck, noisy, jump, spike) apply unless ``[quality] learned = false``.

This runs once per sample, so the checks are numpy expressions over all channels and Python
code runs only for channels that are or were faulty.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from edge_agent.config.model import ChannelQuality, QualityDefaults
from edge_agent.data.jumps import JumpDetector
from edge_agent.data.learned import LearnedLimits, limit_array
from edge_agent.data.repeats import NO_LIMIT
from edge_agent.data.roughness import NOISE_STEPS, NoiseMeter
from edge_agent.data.spikes import SpikeDetector
from edge_agent.events import SEVERITY_WARNING, Event, EventState, new_id

log = logging.getLogger(__name__)

# Reasons in order of precedence; a channel's code is its index + 1, 0 is good.
REASONS = ("stale", "nan", "range", "stuck", "noisy", "jump", "spike")
# Codes from _NOISY on are reported, but the reading is kept and scored.
_GOOD, _STALE, _NAN, _RANGE, _STUCK, _NOISY, _JUMP, _SPIKE = range(8)
# A reading this many training scales away from the training mean is no measurement. Far
# beyond any real excursion (a 1000x overload is 1e3 scales for a typical channel), and it keeps
# every normalized value well inside float32.
IMPLAUSIBLE_SCALES = 1e6
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, slots=True)
class ModelChannels:
    """What the running model knows of each channel, from its manifest: the training (mean,
    scale) for the plausibility bound and the learned limits."""

    mean: FloatArray
    scale: FloatArray
    limits: LearnedLimits


@dataclass(slots=True)
class _Fault:
    """An open sensor_fault episode of one channel."""

    episode: str
    start: float  # t of the first bad sample
    reason: int  # the reason last reported in an event
    last_bad_t: float
    flagged: int = 0  # bad samples in this episode
    good_run: int = 0  # good samples in a row since the last bad one
    pending: int = _GOOD  # a reason other than the reported one...
    pending_run: int = 0  # ...seen this many samples in a row


class QualityMonitor:
    """Checks each sample's channels; keeps the state of their fault episodes.

    Event times: ``start`` is the time of the first bad sample and a close event's ``end``
    the time of the *last bad* sample (the ``clear_samples`` good ones after it prove the
    fault over; they are not part of it); ``created`` is the ``t`` of the call that decided.
    A new reason while the fault is open is reported in an ``update`` once it has held for
    ``clear_samples`` samples in a row: the same hysteresis as closing, so a channel flipping
    between reasons cannot flood the outbox any more than one flipping between good and bad.
    """

    def __init__(
        self,
        channels: list[str],
        checks: Mapping[str, ChannelQuality],
        defaults: QualityDefaults,
        machine_id: str,
        *,
        training: ModelChannels | None = None,
    ) -> None:
        """``training``: what the running model knows of the channels (none before a first
        model: no plausibility bound, and only configured stuck checks)."""
        self.channels = list(channels)
        self.machine_id = machine_id
        own = [checks.get(ch) or ChannelQuality() for ch in self.channels]
        self._configured_stuck = [q.stuck_samples or defaults.stuck_samples for q in own]
        self._learned = defaults.learned
        self._stale_s = np.array(
            [q.stale_s if q.stale_s is not None else defaults.stale_s for q in own], np.float64
        )
        self._min = np.array([-np.inf if q.min is None else q.min for q in own], np.float64)
        self._max = np.array([np.inf if q.max is None else q.max for q in own], np.float64)
        self.set_training(training)
        self._clear = defaults.clear_samples
        n = len(self.channels)
        self._rows = np.arange(n)
        self._last_fresh = np.full(n, np.nan)
        self._run = np.zeros(n, np.int64)  # identical fresh readings in a row
        self._noise = NoiseMeter(n)
        self._level = np.full(n, np.nan)
        self._last_measured = np.full(n, np.nan)  # for a jump's detail: the reading before
        self._before_jump = self._last_measured
        self._prev_code = np.full(n, _GOOD)
        self._prev_t = 0.0
        self._now = 0.0
        self._prev_values = np.full(n, np.nan)
        self._counts = np.zeros((n, len(REASONS) + 1), np.int64)  # column 0: good samples
        self._faults: dict[int, _Fault] = {}
        self._t0: float | None = None

    def set_training(self, training: ModelChannels | None) -> None:
        """The running model's view of the channels; a new model with the same channels
        changes only the plausibility bound and learned limits, and open fault episodes carry
        on."""
        n = len(self.channels)
        self._plausible_lo = np.full(n, -np.inf)
        self._plausible_hi = np.full(n, np.inf)
        learned = LearnedLimits.none(n)
        if training is not None:
            self._plausible_lo = training.mean - IMPLAUSIBLE_SCALES * training.scale
            self._plausible_hi = training.mean + IMPLAUSIBLE_SCALES * training.scale
            if self._learned:
                learned = training.limits
        self._noisy_above = limit_array(learned.noisy_above)
        self._judges_noise = bool(np.isfinite(self._noisy_above).any())
        self._jump_above = limit_array(learned.jump_above)
        self._jumps = JumpDetector(self._jump_above)
        self._judges_jumps = bool(np.isfinite(self._jump_above).any())
        self._spike_above = limit_array(learned.spike_above)
        self._spikes = SpikeDetector(self._spike_above)
        self._judges_spikes = bool(np.isfinite(self._spike_above).any())
        self._late = np.zeros(n, np.bool_)  # the previous sample was a spike (known now)
        stuck = learned.stuck_after
        limits = [c or k for c, k in zip(self._configured_stuck, stuck, strict=True)]
        self._stuck_n = np.array([NO_LIMIT if k is None else k for k in limits], np.int64)
        self._lo = np.maximum(self._min, self._plausible_lo)
        self._hi = np.minimum(self._max, self._plausible_hi)

    def check(
        self, t: float, values: FloatArray, age_s: FloatArray, fresh: BoolArray
    ) -> tuple[FloatArray, list[Event]]:
        """One sample at wall time ``t``: ``values`` (C,) latest readings, ``age_s`` (C,)
        seconds since each channel's last reading (inf if never), ``fresh`` (C,) whether a
        new reading arrived since the previous call. Returns the values with bad ones set
        to NaN, and the events this sample caused (usually none)."""
        if values.shape != self._rows.shape:
            raise ValueError(f"expected {self._rows.shape[0]} channels, got {values.shape}")
        if self._t0 is None:
            self._t0 = t
        self._now = t
        never = np.isinf(age_s)
        age = np.where(never, t - self._t0, age_s)
        same = values == self._last_fresh  # False for NaN, which breaks a run
        self._run = np.where(fresh, np.where(same, self._run + 1, 1), self._run)
        self._last_fresh = np.where(fresh, values, self._last_fresh)

        # ±inf (a decoded float32 overflow, a firmware's 'no reading') is as missing as NaN.
        isnan = ~np.isfinite(values)
        code = np.where(
            age > self._stale_s,
            _STALE,
            np.where(
                isnan & ~never,
                _NAN,
                np.where(
                    (values < self._lo) | (values > self._hi),
                    _RANGE,
                    np.where(self._run >= self._stuck_n, _STUCK, _GOOD),
                ),
            ),
        )
        if self._judges_noise or self._judges_jumps or self._judges_spikes:
            code = self._learned_checks(values, code)
        self._counts[self._rows, code] += 1
        bad = code != _GOOD
        out = np.where(bad & (code < _NOISY), np.nan, values)  # noisy readings, jumps: kept
        events: list[Event] = []
        # A spike in the previous sample, unless that sample was reported already.
        for i in np.flatnonzero(self._late & (self._prev_code == _GOOD)).tolist():
            self._counts[i, _SPIKE] += 1
            self._step(i, _SPIKE, self._prev_t, float(self._prev_values[i]), 0.0, events)
        self._prev_code, self._prev_t, self._prev_values = code, t, values
        if self._faults or bad.any():
            for i in sorted(set(np.flatnonzero(bad).tolist()) | self._faults.keys()):
                self._step(i, int(code[i]), t, float(values[i]), float(age[i]), events)
        return out, events

    def _learned_checks(self, values: FloatArray, code: IntArray) -> IntArray:
        """The learned noise, jump and spike limits, on the readings that passed the checks
        before them: the step to a stale, missing, implausible or stuck one measures nothing."""
        good = code == _GOOD
        measured = np.where(good, values, np.nan)
        if self._judges_noise:  # without a learned noise limit the level is not needed
            self._level = self._noise.push(measured[None, :])[0]
            noisy = good & (self._level > self._noisy_above)
            code = np.where(noisy, _NOISY, code)
            good &= ~noisy
        if self._judges_jumps:
            jump = self._jumps.push(measured[None, :])[0]
            code = np.where(good & jump, _JUMP, code)
            self._before_jump = self._last_measured
            self._last_measured = measured
        if self._judges_spikes:
            _, self._late = self._spikes.push(measured[None, :])
        return code

    def _step(
        self, i: int, code: int, t: float, value: float, age: float, out: list[Event]
    ) -> None:
        """Advance channel ``i``'s episode by one sample."""
        fault = self._faults.get(i)
        if code == _GOOD:
            assert fault is not None  # only open faults reach here with a good sample
            fault.good_run += 1
            if fault.good_run >= self._clear:
                del self._faults[i]
                detail = f"good for {fault.good_run} samples; {fault.flagged} samples flagged"
                out.append(self._event(fault, i, "close", detail, end=fault.last_bad_t))
                log.info("sensor fault over: %s (%s)", self.channels[i], detail)
            return
        if fault is None:
            fault = _Fault(new_id(), start=t, reason=code, last_bad_t=t)
            self._faults[i] = fault
            detail = self._detail(i, code, value, age)
            out.append(self._event(fault, i, "open", detail))
            log.warning("sensor fault: %s %s: %s", self.channels[i], REASONS[code - 1], detail)
        elif code != fault.reason:
            if code == fault.pending and fault.good_run == 0:
                fault.pending_run += 1
            else:
                fault.pending, fault.pending_run = code, 1
            if fault.pending_run >= self._clear:
                fault.reason, fault.pending = code, _GOOD
                out.append(self._event(fault, i, "update", self._detail(i, code, value, age)))
        else:
            fault.pending = _GOOD
        fault.flagged += 1
        fault.good_run = 0
        fault.last_bad_t = t

    def _detail(self, i: int, code: int, value: float, age: float) -> str:
        if code == _STALE:
            return f"no fresh reading for {age:.1f} s (limit {self._stale_s[i]:g} s)"
        if code == _NAN:
            return "the sensor reports no value (NaN)"
        if code == _RANGE:
            return self._range_detail(i, value)
        if code >= _NOISY:
            return self._learned_detail(i, code, value)
        run, limit = self._run[i], self._stuck_n[i]
        return f"value {value:g} in {run} fresh readings in a row (limit {limit})"

    def _learned_detail(self, i: int, code: int, value: float) -> str:
        if code == _NOISY:
            return (
                f"noise level {self._level[i]:.4g} (median step of the last {NOISE_STEPS} "
                f"readings) above the model's limit {self._noisy_above[i]:.4g}"
            )
        if code == _JUMP:
            return (
                f"value {value:g} jumped {abs(value - self._before_jump[i]):.4g} from the "
                f"reading before ({self._before_jump[i]:g}), more than the model's limit "
                f"{self._jump_above[i]:.4g}"
            )
        return (
            f"value {value:g} left the reading before and came back at the next, both "
            f"steps more than the model's limit {self._spike_above[i]:.4g} (a spike; "
            f"reported when the next reading arrived)"
        )

    def _range_detail(self, i: int, value: float) -> str:
        if not self._plausible_lo[i] <= value <= self._plausible_hi[i]:
            return (
                f"value {value:g} is implausible: more than {IMPLAUSIBLE_SCALES:g} training "
                f"scales from the model's mean (plausible {self._plausible_lo[i]:g} .. "
                f"{self._plausible_hi[i]:g})"
            )
        if value < self._min[i]:
            return f"value {value:g} below min {self._min[i]:g}"
        return f"value {value:g} above max {self._max[i]:g}"

    def _event(
        self,
        fault: _Fault,
        i: int,
        state: EventState,
        detail: str,
        end: float | None = None,
    ) -> Event:
        return Event(
            kind="sensor_fault",
            state=state,
            machine_id=self.machine_id,
            episode=fault.episode,
            start=fault.start,
            end=end,
            severity=SEVERITY_WARNING,
            channel=self.channels[i],
            reason=REASONS[fault.reason - 1],
            detail=detail,
            created=self._now,  # the sample that decided, even for a spike told late
        )

    def shift_time(self, step_s: float) -> None:
        """The wall clock stepped by ``step_s``: keep start-up grace periods on the old time."""
        if self._t0 is not None:
            self._t0 += step_s

    def counts(self) -> dict[tuple[str, str], int]:
        """Samples flagged so far, by (channel, reason): every pair, zeros included, so the
        metrics exporter can publish each counter from the start."""
        return {
            (ch, reason): int(self._counts[i, r + 1])
            for i, ch in enumerate(self.channels)
            for r, reason in enumerate(REASONS)
        }

    def faulty(self) -> list[str]:
        """Channels with an open sensor_fault episode, in channel order."""
        return [self.channels[i] for i in sorted(self._faults)]
