"""The rounds this gateway has answered, kept across restarts in ``<state_dir>/learn/rounds.json``.

Pipeline position: fleet learning, read and written by the learner's thread
(``edge_agent.learn.learner``). A retained round announcement is delivered again on every
reconnect and after every restart; a round id found here is not trained again (the desk would
refuse a second delta for it anyway, as ``replayed_round``). Written atomically and durably
(``edge_agent.fsutil.atomic_write``) once the round's delta or refusal report is in the outbox;
an unreadable file is logged and starts an empty log (at worst one round is answered twice).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from edge_agent.fsutil import atomic_write, read_no_follow

log = logging.getLogger("edge_agent.learn")

ROUNDS_FILE = "rounds.json"
MAX_ROUNDS = 256  # ids remembered; a round older than that is long past its deadline
FILE_MODE = 0o640


class RoundLog:
    """Round ids answered (with their outcome), oldest first."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._done: dict[str, str] = self._read()

    def done(self, round_id: str) -> bool:
        return round_id in self._done

    def outcome(self, round_id: str) -> str | None:
        return self._done.get(round_id)

    def add(self, round_id: str, outcome: str) -> None:
        """Remember ``round_id``; an OSError (disk full) leaves it remembered in memory."""
        self._done.pop(round_id, None)
        self._done[round_id] = outcome
        self._done = dict(list(self._done.items())[-MAX_ROUNDS:])
        self.dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.dir / ROUNDS_FILE, json.dumps({"done": self._done}).encode(),
                     mode=FILE_MODE)

    def _read(self) -> dict[str, str]:
        try:
            raw = json.loads(read_no_follow(self.dir, ROUNDS_FILE))
            done = raw["done"]
            if not isinstance(done, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in done.items()):
                raise ValueError("'done' is not a map of round ids to outcomes")
            return dict(done)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("%s unreadable (%s); answered rounds are forgotten",
                        self.dir / ROUNDS_FILE, err)
            return {}
