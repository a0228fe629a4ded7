"""The model the daemon runs: verified bundle → cascade → pipeline → episode tracker, as one.

Sits between the bundle gate (``edge_agent.bundle.verify``) and the agent's main loop. A
:class:`ModelSlot` is built whole from a verified bundle and replaced whole: SIGHUP and
over-the-air updates open a new slot beside the running one, and ``Agent.swap_model`` closes
the old slot's open episodes, primes the new pipeline with the last rows and switches, while
the sources keep polling and the outbox keeps delivering.

:func:`load_cascade` is the one place a bundle becomes a :class:`~edge_agent.detect.cascade.
Cascade` (``replay``, the trainer's evaluation and the benchmarks call it too), so that
``edge_agent.detect`` never imports ``edge_agent.bundle``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge_agent.bundle.manifest import Manifest
from edge_agent.bundle.verify import VerifiedBundle, verify_bundle
from edge_agent.config.model import AgentConfig, EventsConfig
from edge_agent.data.quality import ModelChannels
from edge_agent.detect.cascade import Cascade
from edge_agent.detect.episodes import EpisodeTracker
from edge_agent.detect.forest import FlatForest
from edge_agent.detect.threshold import ThresholdModel
from edge_agent.detect.windows import FEATURE_SET_VERSION
from edge_agent.errors import BundleError, ConfigError
from edge_agent.events import Event
from edge_agent.pipeline import StreamingPipeline
from edge_agent.recent_rows import RecentRows
from edge_agent.sources.config import ReplaySource

log = logging.getLogger("edge_agent.model_slot")

F64 = npt.NDArray[np.float64]
# Clean rows the agent keeps for priming a swapped-in model: its window length, and at least
# this many (a model with a longer window than the running one still starts on a full window).
RECENT_ROWS_MIN = 256


def load_cascade(bundle: VerifiedBundle, *, num_threads: int = 1) -> Cascade:
    """The forest screen and int8 autoencoder of a verified bundle, checked against this
    device's feature kernel and the manifest's window shape."""
    # Imported here so that listing or verifying bundles works without an interpreter.
    from edge_agent.detect.autoencoder import Int8Autoencoder

    m = bundle.manifest
    if m.window.feature_set != FEATURE_SET_VERSION:
        raise BundleError(
            f"{bundle.path}: the model was trained on window feature set "
            f"{m.window.feature_set} but this agent computes feature set "
            f"{FEATURE_SET_VERSION}; re-export the bundle with a matching trainer, or "
            "install the agent version it was made for"
        )
    forest = FlatForest.from_bytes(bundle.files[m.forest.file], source=m.forest.file)
    for part, carried, said in (
        ("envelope", forest.envelope is not None, m.forest.envelope),
        ("residual", forest.residual is not None, m.forest.residual),
    ):
        if carried != said:
            # The screen threshold was set on one kind of score: compared with another it
            # would pass every window, or none.
            raise BundleError(
                f"{m.forest.file}: the manifest says {part}={str(said).lower()}, but the "
                f"forest file {'carries' if carried else 'lacks'} the {part} arrays"
            )
    cells = m.window.length * len(m.channels)
    if forest.residual is not None and forest.residual.cells != cells:
        raise BundleError(
            f"{m.forest.file}: the residual subspace is over {forest.residual.cells} values, "
            f"but the manifest's windows hold {cells}"
        )
    ae = Int8Autoencoder(bundle.files[m.autoencoder.file], num_threads=num_threads)
    if ae.window != m.window.length or ae.channels != len(m.channels):
        raise BundleError(
            f"{m.autoencoder.file}: model input is ({ae.window}, {ae.channels}) but the "
            f"manifest says ({m.window.length}, {len(m.channels)})"
        )
    return Cascade(
        forest=forest,
        screen_threshold=m.forest.screen_threshold,
        autoencoder=ae,
        threshold=m.threshold,
    )


def slot_for_config(cfg: AgentConfig, current: ModelSlot | None = None) -> ModelSlot:
    """The slot ``cfg`` describes: its bundle verified afresh against its trusted keys, and
    ``current`` itself when that is the very same model (same manifest digest and settings)."""
    if cfg.model.bundle is None:
        raise ConfigError(
            "[model] bundle is not set: this agent has no other way to get a model; set it "
            "to the bundle directory written by `export bundle`"
        )
    bundle = verify_bundle(cfg.model.bundle, cfg.model.trusted_keys)
    settings = (cfg.machine_id, cfg.events, cfg.model.threads)
    if current is not None and current.key == (bundle.digest, *settings):
        return current
    return ModelSlot.from_verified(
        bundle, machine_id=cfg.machine_id, events=cfg.events, num_threads=cfg.model.threads
    )


def undelivered_channels(manifest: Manifest, cfg: AgentConfig) -> list[str]:
    """Channels the model needs that no source of ``cfg`` delivers (none for a replay
    source: the file decides, and ``replay`` checks it)."""
    if any(isinstance(s, ReplaySource) for s in cfg.sources):
        return []
    delivered = set(cfg.delivered_channels())
    return [ch for ch in manifest.channel_names if ch not in delivered]


def check_channels(cfg: AgentConfig, slot: ModelSlot) -> None:
    """Refuse a model whose channels the sources of ``cfg`` do not all deliver; warn about
    channels read for nothing."""
    missing = undelivered_channels(slot.manifest, cfg)
    delivered = set(cfg.delivered_channels())
    if missing:
        raise ConfigError(
            f"model {slot.version} needs channels {missing} that no source "
            f"in the config delivers (sources deliver {sorted(delivered)})"
        )
    unused = sorted(delivered - set(slot.channels))
    if unused:
        log.warning("channels %s are read but not used by the model", unused)


class ModelSlot:
    """One verified model and the streaming state built on it, for one machine.

    ``digest`` (SHA-256 of the verified ``manifest.json`` bytes) names the exact bundle: a
    reload swaps only when it changed.
    """

    def __init__(
        self, bundle: VerifiedBundle, cascade: Cascade, *, machine_id: str,
        events: EventsConfig, num_threads: int = 1,
    ) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.digest = bundle.digest
        self.cascade = cascade
        self.machine_id = machine_id
        self.events_config = events
        self.num_threads = num_threads
        self.pipeline = StreamingPipeline(self.manifest, cascade)
        self.episodes = EpisodeTracker(
            machine_id, self.manifest.model_version, self.manifest.channel_names, events
        )
        self._warm = False

    @classmethod
    def open(
        cls, bundle_dir: Path, trusted_keys: Sequence[Path], *, machine_id: str,
        events: EventsConfig, num_threads: int = 1,
    ) -> ModelSlot:
        """Verify ``bundle_dir`` against any of ``trusted_keys`` and load it."""
        bundle = verify_bundle(bundle_dir, trusted_keys)
        return cls.from_verified(
            bundle, machine_id=machine_id, events=events, num_threads=num_threads
        )

    @classmethod
    def from_verified(
        cls, bundle: VerifiedBundle, *, machine_id: str, events: EventsConfig,
        num_threads: int = 1,
    ) -> ModelSlot:
        cascade = load_cascade(bundle, num_threads=num_threads)
        return cls(
            bundle, cascade, machine_id=machine_id, events=events, num_threads=num_threads
        )

    @property
    def version(self) -> str:
        return self.manifest.model_version

    @property
    def channels(self) -> list[str]:
        return self.manifest.channel_names

    @property
    def training_stats(self) -> ModelChannels:
        """Per-channel training (mean, scale) and learned limits, for data quality."""
        chans = self.manifest.channels
        return ModelChannels(
            mean=np.array([c.mean for c in chans]),
            scale=np.array([c.scale for c in chans]),
            limits=self.manifest.learned_limits,
        )

    @property
    def key(self) -> tuple[str, str, EventsConfig, int]:
        """What makes two slots score and report alike: bundle digest, machine, event
        settings, interpreter threads. A reload keeps the running slot when it is unchanged."""
        return (self.digest, self.machine_id, self.events_config, self.num_threads)

    def use_threshold(self, threshold: ThresholdModel) -> None:
        """Score with ``threshold`` instead of the manifest's: this machine's own alert
        threshold (``edge_agent.learn.personalise``, within the manifest's bounds)."""
        self.cascade.threshold = threshold

    def warm_up(self) -> None:
        """Compile and run every kernel once on a throw-away pipeline, so the first real
        window is not delayed by JIT compilation (Numba caches the machine code on disk).
        Once per slot; the slot's own pipeline is not touched."""
        if self._warm:
            return
        m = self.manifest
        pipe = StreamingPipeline(m, self.cascade)
        n = m.window.length + 1
        ts = np.arange(n, dtype=np.float64) * m.sampling.period_s
        mean = np.array([c.mean for c in m.channels])
        pipe.push(ts, np.tile(mean, (n, 1)))
        pipe.push(ts[-1:] + m.sampling.period_s, mean[None, :])
        self._warm = True

    def prime(self, ts: F64, rows: F64) -> None:
        """Push rows another model has already scored (``rows`` in this model's channel
        order) and discard what they make: the window buffers fill, so the next row is
        scored in a full window. The episode tracker does not see them."""
        if ts.shape[0]:
            self.pipeline.push(ts, rows)

    @property
    def history_rows(self) -> int:
        """Recent rows worth keeping for the next model's :meth:`prime_from`."""
        return max(self.manifest.window.length, RECENT_ROWS_MIN)

    def prime_from(self, recent: RecentRows) -> int:
        """:meth:`prime` with the last window of ``recent`` rows, mapped to this model's
        channels by name. Returns the rows pushed: 0 when ``recent`` lacks one of the
        channels, or priming failed (logged; windows then fill from live rows)."""
        held = recent.latest(self.manifest.window.length, self.channels)
        if held is None or held[0].shape[0] == 0:
            log.info("model %s: no recent rows of its channels; its first window fills from "
                     "live rows", self.version)
            return 0
        try:
            self.prime(*held)
        except Exception as err:  # the rows are scored already: priming may only cost time
            log.warning("model %s: priming with %d recent rows failed, windows fill from live "
                        "rows: %r", self.version, held[0].shape[0], err)
            self.pipeline.break_segment()
            return 0
        return int(held[0].shape[0])

    def close_episodes(self, now: float, reason: str) -> list[Event]:
        """``close`` events (of this model's version) for every open episode, ``reason``
        saying why; the tracker is left empty."""
        return self.episodes.close_open(now, reason)
