"""Reading secret files (passwords, private keys) the way a daemon on a shared box must.

Used wherever the agent's config names a file holding a secret: the MQTT password, the TLS
client key, the metrics endpoint's password. A secret file that other users of the gateway can
read is refused before it is used, with a message naming the config key, the file, its mode and
the fix, because a leaked broker password lets anyone on the plant network publish as this
gateway. Readable by its owner, and by a group only when the agent itself runs in that group
(the installer's ``root:edge-agent 0640``), is accepted. The secret itself never appears in a
message.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from edge_agent.errors import ConfigError

WORLD_BITS = stat.S_IROTH | stat.S_IWOTH
GROUP_READ = stat.S_IRGRP


def check_secret_file(path: Path, key: str) -> None:
    """Raise :class:`ConfigError` unless ``path`` is a regular file only we (and our own
    group) can read. ``key`` is the config key path that named it, for the message."""
    try:
        st = path.stat()
    except OSError as err:
        raise ConfigError(f"{key} {path}: cannot read the secret file: {err.strerror}") from err
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key} {path}: not a regular file")
    mode = stat.S_IMODE(st.st_mode)
    if mode & WORLD_BITS:
        raise ConfigError(
            f"{key} {path}: the secret file is readable or writable by every user (mode "
            f"{mode:04o}); run `chmod o-rwx {path}` (0600, or 0640 with the agent's group)"
        )
    if mode & GROUP_READ and st.st_gid not in _own_groups():
        raise ConfigError(
            f"{key} {path}: the secret file is readable by group {st.st_gid}, which this "
            f"agent does not run in (mode {mode:04o}); run `chmod g-r {path}` or give it the "
            "agent's group"
        )


def read_secret_file(path: Path, key: str) -> str:
    """The secret in ``path`` after :func:`check_secret_file`; only the line break an editor
    adds is stripped (spaces may be part of a password)."""
    check_secret_file(path, key)
    try:
        return path.read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{key} {path}: cannot read the secret file: {err}") from err


def _own_groups() -> set[int]:
    return {os.getegid(), *os.getgroups()}
