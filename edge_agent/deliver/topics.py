"""The gateway's MQTT topics: the per-machine tree the uplink publishes and what it may hold.

Used by the outbox (``edge_agent.deliver.outbox``), which stores each row's topic relative to
``<prefix>/<machine>/``, by the uplink (``edge_agent.deliver.mqtt``), which makes it absolute
when it publishes, and by the downlink (``edge_agent.deliver.downlink``), which checks the
filters a caller subscribes to. Pure string rules: no broker, no disk.
"""

from __future__ import annotations

EVENTS = "events"  # anomaly and sensor-fault events (the outbox's default topic)
STATUS = "status"  # the uplink's own retained birth, heartbeat and last will
# Topics the uplink publishes itself: a message there would overwrite its retained state.
RESERVED = frozenset({STATUS})
MAX_TOPIC_BYTES = 65535  # MQTT: a topic is a UTF-8 string with a two-byte length
WILDCARDS = ("+", "#")
LEVEL_SEPARATOR = "/"


def machine_topic(prefix: str, machine_id: str, relative: str) -> str:
    """The absolute topic of ``relative`` (``events``, ``model``...) for one gateway."""
    return f"{prefix}/{machine_id}/{relative}"


def relative_topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be an outbox message's topic (relative to
    ``<prefix>/<machine>/``), or None if it can."""
    if not isinstance(topic, str) or not topic:
        return "it is empty"
    rules = (
        (any(w in topic for w in WILDCARDS),
         "MQTT wildcards '+' and '#' are for subscriptions, not for a published topic"),
        ("\0" in topic, "it contains a NUL character"),
        (topic.startswith(LEVEL_SEPARATOR) or topic.endswith(LEVEL_SEPARATOR),
         "it is relative to <prefix>/<machine>/ and may not start or end with '/'"),
        ("" in topic.split(LEVEL_SEPARATOR), "it has an empty level ('//')"),
        (topic in RESERVED, f"{topic!r} belongs to the uplink's own retained status messages"),
        (len(topic.encode()) > MAX_TOPIC_BYTES, f"it is longer than {MAX_TOPIC_BYTES} bytes"),
    )
    return next((why for broken, why in rules if broken), None)


def filter_problem(topic_filter: str) -> str | None:
    """Why ``topic_filter`` is not a valid MQTT subscription filter, or None if it is."""
    if not isinstance(topic_filter, str) or not topic_filter:
        return "it is empty"
    if "\0" in topic_filter:
        return "it contains a NUL character"
    if len(topic_filter.encode()) > MAX_TOPIC_BYTES:
        return f"it is longer than {MAX_TOPIC_BYTES} bytes"
    levels = topic_filter.split(LEVEL_SEPARATOR)
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return "'#' must be a whole level and the last one"
        if "+" in level and level != "+":
            return "'+' must be a whole level"
    return None
