"""Reading a gateway config: TOML files layered over fleet defaults, ``--set`` overrides,
strict validation, and errors a field engineer can act on.

Sits in front of every agent command (``run``, ``validate``, ``simulate``, ``events``). A
machine file may name a defaults file with ``defaults = "fleet.toml"`` (relative to itself;
defaults files may themselves have defaults). Tables merge key by key, the machine's value
winning; arrays (``sources``) are replaced whole. Relative paths are resolved against the
directory of the file that set them. Validation is pure: nothing is opened but the config files.

Every problem is reported at once, each as ``file[:line]: key.path: what is wrong (got value)``,
with a "did you mean" for misspelt keys.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edge_agent.config.model import AgentConfig
from edge_agent.errors import ConfigError

DEFAULTS_KEY = "defaults"
MAX_LAYERS = 8  # defaults chains deeper than this are surely a cycle or a mistake
SET_SOURCE = "--set"
# Values of keys named like these (or misspelt close to them) never appear in messages.
SECRET_WORDS = ("password", "passwd", "secret", "token", "pwd", "psk")
SECRET_NAME_SIMILARITY = 0.75  # difflib ratio: 'pasword' (0.93) and 'passwrd' count

# Keys holding file-system paths, resolved against the directory of the file that set them.
# "*" matches any list index.
_PATH_KEYS: tuple[tuple[str, ...], ...] = (
    ("state_dir",),
    ("model", "bundle"),
    ("model", "trust_key"),
    ("model", "extra_trust_keys", "*"),
    ("sources", "*", "path"),
    ("mqtt", "password_file"),
    ("mqtt", "tls", "ca_file"),
    ("mqtt", "tls", "certfile"),
    ("mqtt", "tls", "keyfile"),
    ("metrics", "password_file"),
    ("metrics", "tls", "certfile"),
    ("metrics", "tls", "keyfile"),
    ("metrics", "tls", "client_ca_file"),
    ("learn", "device_key"),
)

Loc = tuple[str | int, ...]


class ConfigErrors(ConfigError):
    """All problems found in a config, one per line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        n = len(self.problems)
        head = "invalid config" if n == 1 else f"invalid config ({n} problems)"
        super().__init__(head + ":\n  " + "\n  ".join(self.problems))


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _layers(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The file and its defaults chain, most general first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    current: Path | None = path
    seen: set[Path] = set()
    while current is not None:
        resolved = current.resolve()
        if resolved in seen or len(chain) >= MAX_LAYERS:
            raise ConfigError(f"{current}: '{DEFAULTS_KEY}' chain loops or is deeper than "
                              f"{MAX_LAYERS} files")
        seen.add(resolved)
        data = _read_toml(current)
        parent = data.pop(DEFAULTS_KEY, None)
        chain.append((current, data))
        if parent is None:
            current = None
        elif isinstance(parent, str) and parent:
            current = current.parent / parent
        else:
            raise ConfigError(f"{current}: '{DEFAULTS_KEY}' must be a file name, got {parent!r}")
    chain.reverse()
    return chain


def _merge(
    base: dict[str, Any], top: dict[str, Any], origin: dict[Loc, str], src: str, loc: Loc = ()
) -> None:
    for key, value in top.items():
        here = (*loc, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, origin, src, here)
        else:
            base[key] = value
            for k in [k for k in origin if k[: len(here)] == here]:
                del origin[k]
            _mark(value, origin, src, here)


def _mark(value: Any, origin: dict[Loc, str], src: str, loc: Loc) -> None:
    origin[loc] = src
    if isinstance(value, dict):
        for k, v in value.items():
            _mark(v, origin, src, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _mark(v, origin, src, (*loc, i))


def _looks_secret(key: str) -> bool:
    """A key named like a secret, misspelt ones included (``pasword``): its value is never
    echoed in an error message, which ends up in the journal."""
    name = key.lower()
    return any(w in name for w in SECRET_WORDS) or bool(
        difflib.get_close_matches(name, SECRET_WORDS, n=1, cutoff=SECRET_NAME_SIMILARITY)
    )


def _shown(override: str) -> str:
    """A ``--set key=value`` as it may appear in a message: the value hidden for secrets."""
    key, sep, _ = override.partition("=")
    last = key.strip().rsplit(".", 1)[-1]
    return f"{key}=<hidden>" if sep and _looks_secret(last) else override


def _parse_override(text: str) -> tuple[list[str | int], Any]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            f"--set {_shown(text)!r}: expected key.path=value, e.g. mqtt.host=10.0.0.5"
        )
    path: list[str | int] = [int(p) if p.isdigit() else p for p in key.split(".")]
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: take it as a string (host names, paths)
    return path, value


def _apply_override(data: dict[str, Any], path: list[str | int], value: Any, text: str) -> None:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            if not isinstance(part, int) or part >= len(node):
                raise ConfigError(f"--set {_shown(text)!r}: no item {part} in the list at "
                                  f"{'.'.join(map(str, path[:i]))} ({len(node)} items)")
            node = node[part]
        else:
            if isinstance(part, int):
                where = ".".join(map(str, path[:i]))
                raise ConfigError(f"--set {_shown(text)!r}: {where} is not a list")
            node = node.setdefault(part, [] if isinstance(nxt, int) else {})
    last = path[-1]
    if isinstance(node, list):
        if not isinstance(last, int) or last >= len(node):
            raise ConfigError(
                f"--set {_shown(text)!r}: no item {last} in that list ({len(node)} items)"
            )
        node[last] = value
    elif isinstance(node, dict):
        node[str(last)] = value
    else:
        raise ConfigError(f"--set {_shown(text)!r}: the parent is a value, not a table")


def _resolve_paths(data: dict[str, Any], origin: dict[Loc, str]) -> None:
    def walk(node: Any, pattern: tuple[str, ...], loc: Loc) -> None:
        if not pattern:
            src = origin.get(loc)
            if isinstance(node, str) and node and src and src != SET_SOURCE:
                p = Path(node).expanduser()
                if not p.is_absolute():
                    _set(data, loc, os.path.normpath(Path(src).parent / p))
            return
        head, rest = pattern[0], pattern[1:]
        if head == "*" and isinstance(node, list):
            for i, item in enumerate(node):
                walk(item, rest, (*loc, i))
        elif isinstance(node, dict) and head in node:
            walk(node[head], rest, (*loc, head))

    for pattern in _PATH_KEYS:
        walk(data, pattern, ())


def _set(data: dict[str, Any], loc: Loc, value: Any) -> None:
    node: Any = data
    for part in loc[:-1]:
        node = node[part]
    node[loc[-1]] = value


def load_config(path: Path | str, overrides: Sequence[str] = ()) -> AgentConfig:
    """Read, layer, override and validate a config; raise :class:`ConfigErrors` listing every
    problem."""
    path = Path(path)
    data: dict[str, Any] = {}
    origin: dict[Loc, str] = {}
    texts: dict[str, str] = {}
    for file, layer in _layers(path):
        texts[str(file)] = file.read_text(encoding="utf-8")
        _merge(data, layer, origin, str(file))
    for text in overrides:
        keys, value = _parse_override(text)
        _apply_override(data, keys, value, text)
        _mark(value, origin, SET_SOURCE, tuple(keys))
    _resolve_paths(data, origin)
    try:
        return AgentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigErrors(
            [_describe(e, data, origin, texts, str(path)) for e in exc.errors()]
        ) from None


def _data_loc(loc: Loc, data: dict[str, Any]) -> Loc:
    """Drop discriminator tags pydantic puts in error locations (sources.0.modbus_tcp.host)."""
    out: list[str | int] = []
    node: Any = data
    for part in loc:
        in_dict = isinstance(node, dict) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if in_dict or in_list:
            out.append(part)
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and node.get("type") == part:
            continue
        else:
            out.append(part)
            node = None
    return tuple(out)


def _describe(
    err: Any, data: dict[str, Any], origin: dict[Loc, str], texts: dict[str, str], top: str
) -> str:
    loc = _data_loc(tuple(err["loc"]), data)
    key = ".".join(str(p) for p in loc) or "(top level)"
    src = top
    for n in range(len(loc), -1, -1):
        if loc[:n] in origin:
            src = origin[loc[:n]]
            break
    where = src
    if src in texts and loc:
        line = _find_line(texts[src], loc)
        if line:
            where = f"{src}:{line}"
    msg = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
        allowed = _allowed_keys(loc[:-1], data)
        hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        if hint:
            msg += f"; did you mean {hint[0]!r}?"
        elif allowed:
            msg += f"; expected one of: {', '.join(sorted(allowed))}"
    elif err["type"] == "missing":
        msg = "required key is missing"
    got = "" if err["type"] == "missing" else f" (got {err['input']!r})"
    if got and _looks_secret(str(loc[-1]) if loc else ""):
        got = " (value hidden: the key looks like a secret)"
    if err["type"] in ("model_type", "dict_type") or isinstance(err.get("input"), dict):
        got = ""
    return f"{where}: {key}: {msg}{got}"


def _find_line(text: str, loc: Loc) -> int | None:
    """Line of ``key =`` for the last named key in ``loc``, when it occurs exactly once."""
    names = [p for p in loc if isinstance(p, str)]
    if not names:
        return None
    pat = re.compile(rf"^\s*(\"?){re.escape(names[-1])}\1\s*=")
    hits = [i for i, ln in enumerate(text.splitlines(), 1) if pat.match(ln)]
    return hits[0] if len(hits) == 1 else None


def _allowed_keys(loc: Loc, data: dict[str, Any]) -> list[str]:
    """Field names of the model found at ``loc`` (following the ``type`` of union members)."""
    model: Any = AgentConfig
    node: Any = data
    for part in loc:
        model = _child_model(model, part, node)  # ``node`` is the parent: its ``type`` picks
        if model is None:
            return []
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    model = model if _is_model(model) else _pick(model, node)
    return list(model.model_fields) if _is_model(model) else []


def _child_model(model: Any, part: str | int, node: Any) -> Any:
    """The type found one step down from ``model`` (a model class or a container type)."""
    import typing

    if isinstance(part, str):
        if typing.get_origin(model) is dict:  # a name-keyed table: the key is a name
            return _strip(typing.get_args(model)[1])
        model = _pick(model, node) if not _is_model(model) else model
        if not _is_model(model):
            return None
        field = model.model_fields.get(part)
        return None if field is None else _strip(field.annotation)
    args = typing.get_args(_strip(model))
    return _strip(args[0]) if typing.get_origin(_strip(model)) in (list, tuple) and args else None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _strip(tp: Any) -> Any:
    """Drop Annotated and Optional wrappers."""
    import types
    import typing

    for _ in range(6):
        origin_t = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin_t is typing.Annotated:
            tp = args[0]
        elif origin_t in (typing.Union, types.UnionType) and type(None) in args:
            rest = tuple(a for a in args if a is not type(None))
            tp = rest[0] if len(rest) == 1 else typing.Union[rest]  # noqa: UP007
        else:
            break
    return tp


def _pick(tp: Any, node: Any) -> Any:
    import typing

    if typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    members = typing.get_args(tp) or (tp,)
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if len(models) == 1:
        return models[0]
    tag = node.get("type") if isinstance(node, dict) else None
    for m in models:
        f = m.model_fields.get("type")
        if f is not None and tag in typing.get_args(f.annotation):
            return m
    return None
