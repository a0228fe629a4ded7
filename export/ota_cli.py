"""The ``publish`` and ``fleet`` subcommands of ``python -m export`` (over-the-air updates).

Sits on the desk; ``export.cli`` adds these subparsers and hands the parsed arguments here.
The broker options carry the names and defaults of the agent's ``[mqtt]`` table
(``edge_agent.deliver.config.MqttConfig``): a desk configured like its gateways reaches the
same broker the same way. The password comes from a file only (a command line is visible to
every user of the machine in ``ps``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edge_agent.deliver.config import MqttConfig, TlsConfig
from edge_agent.ota.protocol import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES, NAME_PATTERN
from export.errors import ExportError

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTTS_PORT = 8883
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_FLEET_WAIT_S = 2.0
DISCOVER_WAIT_S = 5.0  # the longest wait for the retained reports before publishing
# A signed downgrade replayed later (by anyone who can publish on the broker) would put that
# old model back, so a downgrade always expires: after a day unless --expires-in says.
DOWNGRADE_EXPIRY_S = 24 * 3600.0


def add_broker_options(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    d = MqttConfig.model_fields
    p.add_argument("--broker", required=required, metavar="HOST[:PORT]",
                   help=f"the fleet's broker (port {DEFAULT_MQTT_PORT}, {DEFAULT_MQTTS_PORT} "
                   "with TLS)")
    p.add_argument("--topic-prefix", default=d["topic_prefix"].default,
                   help="the agents' mqtt.topic_prefix (default %(default)s)")
    p.add_argument("--username", help=d["username"].description)
    p.add_argument("--password-file", type=Path, help=d["password_file"].description)
    p.add_argument("--tls", action="store_true", help="TLS with the system's CA store")
    tls = TlsConfig.model_fields
    p.add_argument("--ca-file", type=Path, help=f"TLS: {tls['ca_file'].description}")
    p.add_argument("--certfile", type=Path, help=f"TLS: {tls['certfile'].description}")
    p.add_argument("--keyfile", type=Path, help=f"TLS: {tls['keyfile'].description}")
    p.add_argument(
        "--tls-insecure", action="store_true", help=f"TLS: {tls['insecure'].description}"
    )


def add_parsers(sub: Any) -> None:
    """Add ``publish`` and ``fleet`` to ``export``'s subparsers."""
    p = sub.add_parser(
        "publish",
        help="push a signed bundle to gateways over the MQTT broker",
        description="Verify a bundle, publish its files as retained chunks and a signed "
        "deployment per target, then follow the gateways' reports until each is active.",
    )
    p.add_argument("--bundle", type=Path, required=True, help="bundle directory")
    p.add_argument("--key", type=Path, required=True, help="Ed25519 private key (signing.key)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--machine", action="append", default=[], metavar="ID",
                     help="a target machine id (repeat for several)")
    who.add_argument("--group", metavar="NAME", help="a target group (the agents' ota.groups)")
    p.add_argument("--wave", type=int, metavar="N",
                   help="staged rollout: N machines at a time, next wave when all are done")
    p.add_argument("--halt-on-rollback", action="store_true",
                   help="stop the rollout at the first rejected or rolled-back machine")
    p.add_argument("--expires-in", type=float, metavar="SECONDS",
                   help="gateways refuse the deployment after this many seconds")
    p.add_argument("--allow-downgrade", action="store_true",
                   help="let gateways replace a newer model with this one (signed; expires "
                   f"after {DOWNGRADE_EXPIRY_S:g} s unless --expires-in says)")
    p.add_argument("--chunk-bytes", type=int, default=DEFAULT_CHUNK_BYTES,
                   help="bytes per retained chunk (default %(default)s)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                   help="seconds to wait for each wave (default %(default)g)")
    p.add_argument("--no-wait", action="store_true", help="publish and exit without waiting")
    add_broker_options(p)
    f = sub.add_parser("fleet", help="list the machines the broker knows, their models and updates")
    f.add_argument("--wait", type=float, default=DEFAULT_FLEET_WAIT_S, metavar="S",
                   help="longest wait for the broker's retained messages (default %(default)g)")
    f.add_argument("--clean-chunks", action="store_true",
                   help="delete retained bundle chunks no retained deployment uses")
    f.add_argument("--json", action="store_true", help="JSON output for scripts")
    add_broker_options(f)


def mqtt_config(args: argparse.Namespace) -> MqttConfig:
    """The ``[mqtt]`` table the broker options describe; ExportError names a bad option."""
    host, _, port_text = args.broker.rpartition(":") if ":" in args.broker else (
        args.broker, "", ""
    )
    host = host.strip("[]")
    use_tls = args.tls or any(
        v is not None for v in (args.ca_file, args.certfile, args.keyfile)
    ) or args.tls_insecure
    if not port_text:
        port = DEFAULT_MQTTS_PORT if use_tls else DEFAULT_MQTT_PORT
    elif port_text.isdigit():
        port = int(port_text)
    else:
        raise ExportError(f"--broker {args.broker!r}: the port {port_text!r} is not a number")
    tls = (
        {"ca_file": args.ca_file, "certfile": args.certfile, "keyfile": args.keyfile,
         "insecure": args.tls_insecure}
        if use_tls else None
    )
    try:
        return MqttConfig.model_validate({
            "host": host, "port": port, "username": args.username,
            "password_file": args.password_file, "tls": tls, "topic_prefix": args.topic_prefix,
        })
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'broker'}: {e['msg']}"
                             for e in exc.errors())
        raise ExportError(f"broker options: {problems}") from None


def _check_names(names: list[str], what: str) -> None:
    bad = [n for n in names if not re.match(NAME_PATTERN, n)]
    if bad:
        raise ExportError(f"{what} {bad}: not topic-safe names (expected {NAME_PATTERN})")


def run_publish(args: argparse.Namespace) -> int:
    from export.broker import DeskLink
    from export.keys import load_private_key
    from export.publish import Order, load_release, new_deployment_id
    from export.rollout import Plan, rollout

    machines = list(dict.fromkeys(args.machine))  # repeated ids once, in the order given
    _check_names(machines, "--machine")
    _check_names([args.group] if args.group else [], "--group")
    if args.wave is not None and args.wave < 1:
        raise ExportError(f"--wave {args.wave}: must be at least 1 machine per wave")
    if args.wave is not None and args.no_wait:
        raise ExportError("--wave waits for each wave to finish; it cannot go with --no-wait")
    if not 0 < args.chunk_bytes <= MAX_CHUNK_BYTES:
        raise ExportError(f"--chunk-bytes {args.chunk_bytes}: must be 1 to {MAX_CHUNK_BYTES}")
    if args.timeout <= 0 or (args.expires_in is not None and args.expires_in <= 0):
        raise ExportError("--timeout and --expires-in must be positive seconds")
    cfg = mqtt_config(args)
    key = load_private_key(args.key)
    release = load_release(args.bundle, key)
    now = time.time()
    expires_in = args.expires_in
    if args.allow_downgrade and expires_in is None:
        expires_in = DOWNGRADE_EXPIRY_S
        print(f"--allow-downgrade: the deployment expires in {expires_in:g} s (--expires-in)")
    order = Order(new_deployment_id(now), now, expires_in, args.allow_downgrade, args.chunk_bytes)
    plan = Plan(cfg.topic_prefix, tuple(machines), args.group, args.wave, args.halt_on_rollback,
                args.timeout, not args.no_wait, DISCOVER_WAIT_S)
    with DeskLink(cfg) as link:
        return rollout(link, release, key, order, plan, sys.stdout)


def run_fleet(args: argparse.Namespace) -> int:
    from export.broker import DeskLink
    from export.fleet import clean_chunks, collect, print_json, print_table

    if args.wait <= 0:
        raise ExportError(f"--wait {args.wait}: must be positive seconds")
    cfg = mqtt_config(args)
    with DeskLink(cfg) as link:
        machines = collect(link, cfg.topic_prefix, args.wait)
        cleaned = clean_chunks(link, cfg.topic_prefix, args.wait) if args.clean_chunks else None
    if args.json:
        print_json(machines, cleaned, sys.stdout)
    else:
        print_table(machines, cleaned, sys.stdout)
    return 0
