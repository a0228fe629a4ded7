"""The one base of every config and manifest model: unknown keys rejected, values frozen.

Used by the agent's config (``edge_agent.config.model`` and the backend sections next to their
code), the bundle manifest and the trainer's settings, so a misspelt key is an error
everywhere, never a silently ignored default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """A pydantic model that forbids extra keys and cannot be mutated after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
