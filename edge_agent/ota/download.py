"""One deployment's download: which chunk topics to ask the broker for, and what came.

Driven by the updater's thread (``edge_agent.ota.updater``). The chunks are retained on the
broker under ``<prefix>/ota/blob/<sha256>/<index>`` (``edge_agent.ota.protocol``); the
gateway subscribes to a sliding window of the chunk topics it still misses, at most
:data:`WINDOW_CHUNKS` at a time, and drops each subscription as its chunk arrives. So the
broker never sends more than a window of chunks ahead of the disk (memory stays bounded
whatever the bundle's size), no chunk the gateway holds is sent again, and a connection lost
mid-way resumes by itself: the downlink subscribes the window again on the new connection and
the broker sends those retained chunks again. Files some bundle on this gateway already holds
are never asked for.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from edge_agent.ota.assemble import LocalFiles
from edge_agent.ota.pointer import SlotName
from edge_agent.ota.protocol import Deployment, Progress, chunk_topic
from edge_agent.ota.staging import Staging

WINDOW_CHUNKS = 8  # chunk topics subscribed at once
# No chunk for this long while some are missing: ask again (subscribing anew makes the broker
# resend the retained chunks; one may have been dropped on the way in).
STALL_S = 30.0
PROGRESS_EVERY_S = 5.0  # retained progress reports while downloading, at most this often


@dataclass
class Download:
    """The chunks of one deployment: held in staging, asked for, still missing."""

    deployment: Deployment
    staging: Staging
    local: LocalFiles
    target: SlotName
    prefix: str
    asked: set[tuple[str, int]] = field(default_factory=set)
    last_chunk: float = field(default_factory=time.monotonic)
    last_progress: float = 0.0

    @property
    def id(self) -> str:
        return self.deployment.deployment_id

    def missing(self) -> list[tuple[str, int]]:
        """Chunks neither held nor available locally, in order."""
        skip = self.local.digests
        out: list[tuple[str, int]] = []
        for sha in self.staging.missing_files(skip):
            n = next(len(f.chunks) for f in self.deployment.files.values() if f.sha256 == sha)
            out += [(sha, i) for i in range(n) if (sha, i) not in self.staging.held]
        return out

    @property
    def complete(self) -> bool:
        return self.staging.complete(self.local.digests)

    def to_ask(self) -> list[str]:
        """Chunk topics to subscribe now to keep the window full (recorded as asked)."""
        free = WINDOW_CHUNKS - len(self.asked)
        new = [k for k in self.missing() if k not in self.asked][: max(0, free)]
        self.asked.update(new)
        return [chunk_topic(self.prefix, sha, i) for sha, i in new]

    def asked_topics(self) -> list[str]:
        return [chunk_topic(self.prefix, sha, i) for sha, i in sorted(self.asked)]

    def got(self, sha: str, index: int) -> str | None:
        """A chunk came: the topic to unsubscribe, if it was asked for."""
        self.last_chunk = time.monotonic()
        if (sha, index) in self.asked:
            self.asked.discard((sha, index))
            return chunk_topic(self.prefix, sha, index)
        return None

    def stalled(self, now: float) -> bool:
        return bool(self.asked) and now - self.last_chunk >= STALL_S

    def progress(self) -> Progress:
        return Progress(
            bytes=self.staging.held_bytes(self.local.digests), total=self.staging.total_bytes
        )

    def progress_due(self, now: float) -> bool:
        if now - self.last_progress < PROGRESS_EVERY_S:
            return False
        self.last_progress = now
        return True
