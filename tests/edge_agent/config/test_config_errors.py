"""Config loading: layering, --set, path resolution, and a table of bad configs whose errors
must name the file, the key path, the bad value and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config.load import ConfigErrors, load_config
from edge_agent.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]
SHIPPED = sorted((REPO / "firmware_configs").glob("*.toml"))
MACHINE_CONFIGS = [p for p in SHIPPED if p.name != "fleet.toml"]

GOOD = """
machine_id = "m1"
[model]
bundle = "bundle"
trust_key = "keys/trust.pem"
[[sources]]
type = "modbus_tcp"
name = "plc"
host = "127.0.0.1"
[[sources.devices]]
name = "d1"
points = [{ channel = "p", address = 0, type = "float32" }]
"""


def _write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("path", MACHINE_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.machine_id
    assert cfg.sources


def test_shipped_configs_cover_demo_tcp_and_rtu() -> None:
    kinds = {s.type for p in MACHINE_CONFIGS for s in load_config(p).sources}
    assert {"modbus_tcp", "modbus_rtu", "serial_line"} <= kinds
    assert (REPO / "firmware_configs" / "demo.toml") in MACHINE_CONFIGS


def test_relative_paths_resolve_against_their_file(tmp_path: Path) -> None:
    cfg = load_config(_write(tmp_path, GOOD))
    assert cfg.model.bundle == tmp_path / "bundle"
    assert cfg.model.trust_key == tmp_path / "keys" / "trust.pem"


def test_layering_machine_wins_and_tables_merge(tmp_path: Path) -> None:
    _write(tmp_path, '[mqtt]\nhost = "fleet-broker"\nport = 8883\n[log]\nlevel = "warning"\n',
           "fleet.toml")
    cfg = load_config(
        _write(tmp_path, 'defaults = "fleet.toml"\n' + GOOD + '[mqtt]\nhost = "local"\n')
    )
    assert cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port) == ("local", 8883)
    assert cfg.log.level == "warning"


def test_set_overrides_typed_values_and_list_items(tmp_path: Path) -> None:
    cfg = load_config(
        _write(tmp_path, GOOD),
        ["sources.0.port=1502", "sources.0.host=10.1.2.3", "mqtt.host=broker", "machine_id=m2"],
    )
    src = cfg.sources[0]
    assert src.type == "modbus_tcp"
    assert (src.host, src.port) == ("10.1.2.3", 1502)
    assert cfg.mqtt is not None
    assert cfg.mqtt.host == "broker"
    assert cfg.machine_id == "m2"


BAD_CASES = [
    # (replace this text in GOOD, with this, expected fragments of the one error line)
    ('host = "127.0.0.1"', 'hots = "127.0.0.1"', ["sources.0.hots", "did you mean 'host'"]),
    ('name = "d1"', 'name = "d1"\npol_period_s = 2', ["sources.0.devices.0.pol_period_s",
                                                     "did you mean 'poll_period_s'"]),
    ('type = "float32"', 'type = "float33"', ["sources.0.devices.0.points.0.type", "'float33'",
                                              "'float32'"]),
    ('name = "d1"', 'name = "d1"\nunit_id = 300', ["unit_id", "less than or equal to 255",
                                                   "got 300"]),
    ('machine_id = "m1"', 'machine_id = "bad id/1"', ["machine_id", "pattern", "'bad id/1'"]),
    ('type = "modbus_tcp"', 'type = "modbus_udp"', ["sources.0", "modbus_udp", "modbus_rtu"]),
    ('machine_id = "m1"', "", ["machine_id", "required key is missing"]),
    ('address = 0, type = "float32"', 'table = "coil", address = 0, type = "float32"',
     ["coils and discrete inputs are type 'bool'"]),
    ('[model]', '[channels.nope]\nmin = 1\n[model]', ["channels", "'nope'", "no source"]),
    ('[model]', '[channels.p]\nmin = 5\nmax = 1\n[model]', ["channels.p", "below max"]),
]


@pytest.mark.parametrize(("old", "new", "expected"), BAD_CASES)
def test_bad_config_names_file_key_value_and_expectation(
    tmp_path: Path, old: str, new: str, expected: list[str]
) -> None:
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigErrors) as err:
        load_config(path)
    text = str(err.value)
    assert str(path) in text
    for fragment in expected:
        assert fragment in text, text


def test_every_problem_reported_at_once_with_line_numbers(tmp_path: Path) -> None:
    bad = GOOD.replace('host = "127.0.0.1"', 'host = "127.0.0.1"\nport = 0').replace(
        'name = "d1"', 'name = "d1"\npoll_period_s = -1'
    )
    path = _write(tmp_path, bad)
    with pytest.raises(ConfigErrors) as err:
        load_config(path)
    assert len(err.value.problems) == 2
    port_line = next(i for i, ln in enumerate(bad.splitlines(), 1) if ln.startswith("port"))
    assert any(p.startswith(f"{path}:{port_line}: sources.0.port") for p in err.value.problems)


def test_error_names_the_layer_the_bad_key_came_from(tmp_path: Path) -> None:
    fleet = _write(tmp_path, "[outbox]\nmax_mb = -5\n", "fleet.toml")
    path = _write(tmp_path, 'defaults = "fleet.toml"\n' + GOOD)
    with pytest.raises(ConfigErrors) as err:
        load_config(path)
    assert f"{fleet}:2: outbox.max_mb" in str(err.value)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("machine_id = ", "not valid TOML"),
        ('defaults = "missing.toml"\n' + GOOD, "missing.toml: config file not found"),
        ('defaults = "agent.toml"\n' + GOOD, "chain loops"),
    ],
)
def test_unreadable_configs(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(_write(tmp_path, text))


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("novalue", "expected key.path=value"), ("sources.5.host=x", "no item 5"),
     ("sources.0.port=abc", "sources.0.port")],
)
def test_bad_overrides(tmp_path: Path, override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(_write(tmp_path, GOOD), [override])


SECRET = "hunter2-not-for-the-journal"


@pytest.mark.parametrize(
    ("table", "key"),
    [("mqtt", "pasword"), ("mqtt", "password"), ("mqtt", "passwrd"), ("metrics", "token")],
)
def test_errors_never_echo_a_secret_value(tmp_path: Path, table: str, key: str) -> None:
    """A misspelt or misplaced secret key is reported by name; its value stays out of the
    message (which systemd writes to the journal)."""
    extra = f'\n[{table}]\nhost = "10.0.0.5"\n{key} = "{SECRET}"\npassword_file = 3\n'
    with pytest.raises(ConfigErrors) as err:
        load_config(_write(tmp_path, GOOD + extra))
    text = str(err.value)
    assert f"{table}.{key}" in text or f"{table}.password" in text
    assert SECRET not in text
    assert "hidden" in text


def test_a_bad_override_of_a_secret_hides_its_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, GOOD), [f"sources.9.password={SECRET}"])
    assert SECRET not in str(err.value)
    assert "sources.9.password=<hidden>" in str(err.value)


def test_an_ordinary_bad_value_is_still_shown(tmp_path: Path) -> None:
    bad = GOOD.replace('name = "d1"', 'name = "d1"\npoll_period_s = "fast"')
    with pytest.raises(ConfigErrors, match="got 'fast'"):
        load_config(_write(tmp_path, bad))
