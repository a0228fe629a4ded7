"""The desk aggregator over a local Mosquitto: ``trainer federate --broker`` with N gateways.

For each fleet size the bench registers N gateway keys, makes one signed 1 % delta per gateway
against the bundle's ``train_weights.npz`` (random updates of a local round's scale: the wire
size is that of a real delta of this model, ``bench/delta_size.py`` measures real ones), then
runs ``python -m trainer federate --broker`` as a user would (a subprocess, its own peak RSS
read from ``/proc/self/status`` at exit). Stand-in gateways wait for the signed retained
announcement, open it with the gateway's ``open_round`` and publish their deltas at QoS 1 on
``<prefix>/<machine>/delta`` (from a few connections, each publishing for many machine ids:
the broker and the desk see the same messages as from N connections). Recorded: the time
from the announcement to the last delta spooled and to the new run written, deltas accepted,
bytes received, the aggregator's peak RSS (it should not grow with N), and the same round
split over two aggregator processes in one shared-subscription group (``--partial-out``, then
``--merge``): how the broker divided the deltas, and that the merged run equals the single one.

    python bench/federate_broker.py                 # 200 and 1000 gateways
    python bench/federate_broker.py --gateways 20 --run R --bundle B --key K   # smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, machine, make_bundle

sys.path.insert(0, str(ROOT / "tests"))  # the tests' real-broker helpers
from broker import Mosquitto, Subscriber
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.bundle.verify import load_public_key, verify_bundle
from edge_agent.deliver.config import MqttConfig
from edge_agent.learn.bundle_weights import load_train_weights
from edge_agent.learn.delta import encode_delta
from edge_agent.learn.rounds import open_round, round_topic
from edge_agent.learn.sparse import SparseDelta, sparsify
from edge_agent.learn.weights import WeightSet
from export.broker import DeskLink
from export.keys import load_private_key
from export.publish import public_pem

PREFIX = "edge"
FRACTION = 0.01
UPDATE_SCALE = 1e-3  # std of a local round's weight change (order of delta_size.py's)
PUBLISHERS = 8  # connections the stand-in gateways publish from
ANNOUNCE_WAIT_S = 120.0
ROUND_TIMEOUT_S = 300.0  # the single aggregator closes early, when every gateway answered
SPLIT_TIMEOUT_S = 40.0  # split workers wait for the deadline (none sees the whole fleet)
# Runs trainer federate and reports its peak RSS (VmHWM) on stderr at exit.
RUNNER = (
    "import sys, re; from trainer.cli import main; rc = main(sys.argv[1:]); "
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1); "
    "print('VMHWM_KB', hwm, file=sys.stderr); sys.exit(rc)"
)


Gateway = tuple[str, Ed25519PrivateKey, SparseDelta]


def _fleet(base: WeightSet, keydir: Path, n: int, seed: int) -> list[Gateway]:
    """N registered gateways (public keys in ``keydir``), their keys and sparse deltas."""
    keydir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    sizes = tuple(int(a.size) for a in base.arrays)
    out: list[Gateway] = []
    for i in range(n):
        key = Ed25519PrivateKey.generate()
        machine_id = f"gw-{i:05d}"
        pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        (keydir / f"{machine_id}.pub").write_bytes(pem)
        update = rng.normal(0.0, UPDATE_SCALE, base.size).astype(np.float32)
        out.append((machine_id, key, sparsify(update, sizes, FRACTION)))
    return out


def _gateways(port: int, fleet_pub: Path, base: WeightSet, gateways: list[Gateway],
              round_id: str, result: dict[str, Any]) -> None:  # fmt: skip
    """Wait for the announcement of ``round_id`` (an earlier round's stays retained), answer
    it with every gateway's delta."""
    trusted = [load_public_key(fleet_pub)]
    try:
        with Subscriber(port, round_topic(PREFIX)) as sub:
            got = sub.wait_until(
                lambda msgs: any(open_round(m.payload, trusted).round_id == round_id
                                 for m in msgs), ANNOUNCE_WAIT_S)  # fmt: skip
        result["announced_at"] = time.monotonic()
        ann = open_round(got[-1].payload, trusted)
        msgs = [
            (f"{PREFIX}/{m}/delta", encode_delta(
                sparse, base=base, machine_id=m, model_version=ann.base_model_version,
                round_id=ann.round_id, samples=100, epochs=ann.epochs, key=key))
            for m, key, sparse in gateways
        ]  # fmt: skip
        cfg = MqttConfig.model_validate({"host": "127.0.0.1", "port": port})
        shares = [msgs[i::PUBLISHERS] for i in range(PUBLISHERS)]
        links = [DeskLink(cfg).connect() for _ in shares]
        threads = [threading.Thread(target=lk.publish, args=(s,), kwargs={"retain": False})
                   for lk, s in zip(links, shares, strict=True)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for lk in links:
            lk.close()
        result["published_at"] = time.monotonic()
        result["payload_bytes"] = sum(len(p) for _, p in msgs)
    except Exception as exc:
        result["error"] = repr(exc)


def _federate(argv: list[str]) -> tuple[int, float, int, str]:
    """(exit code, wall s, peak RSS kB, stdout) of one trainer federate process."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", RUNNER, *argv], capture_output=True, text=True,
                          cwd=ROOT, check=False)  # fmt: skip
    wall = time.monotonic() - t0
    hwm = [ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("VMHWM_KB")]
    if proc.returncode != 0:
        print(proc.stderr[-3000:], file=sys.stderr)
    return proc.returncode, wall, int(hwm[0]) if hwm else 0, proc.stdout


def one_size(
    n: int, run: Path, bundle: Path, key: Path, work: Path, split_timeout_s: float
) -> dict[str, Any]:
    pub = work / "fleet.pub"
    pub.write_bytes(public_pem(load_private_key(key)))
    verified = verify_bundle(bundle, pub)
    base = load_train_weights(bundle, verified.manifest)
    assert base is not None, "the bundle has no train_weights.npz (a dense model is needed)"
    gateways = _fleet(base, work / f"devices-{n}", n, seed=n)
    row: dict[str, Any] = {"gateways": n, "parameters": base.size, "fraction": FRACTION}
    broker = Mosquitto(work / f"broker-{n}")
    broker.start()
    try:
        common = ["federate", "--run", str(run), "--trust-devices", str(work / f"devices-{n}"),
                  "--broker", f"127.0.0.1:{broker.port}"]  # fmt: skip
        # One aggregator: announces, collects until every gateway answered, writes the run.
        side: dict[str, Any] = {}
        fleet = threading.Thread(
            target=_gateways, args=(broker.port, pub, base, gateways, f"r{n}", side)
        )
        fleet.start()
        out = work / f"new-{n}"
        rc, wall, rss, _ = _federate([*common, "--round", f"r{n}", "--out", str(out),
                                      "--bundle", str(bundle), "--key", str(key),
                                      "--round-timeout", str(ROUND_TIMEOUT_S)])  # fmt: skip
        done = time.monotonic()
        fleet.join()
        if rc != 0 or "error" in side:
            raise RuntimeError(f"single aggregator failed: rc {rc}, {side.get('error')}")
        rep = json.loads((out / "federate.json").read_text())
        row["single"] = {
            "accepted": rep["accepted"], "refused": rep["refused"],
            "payload_bytes": side["payload_bytes"], "bytes_received": rep["bytes_received"],
            "bytes_per_delta": round(rep["bytes_received"] / max(rep["accepted"], 1), 1),
            "announce_to_all_published_s": round(side["published_at"] - side["announced_at"], 2),
            "announce_to_run_written_s": round(done - side["announced_at"], 2),
            "federate_round_s": rep["seconds"], "process_wall_s": round(wall, 2),
            "peak_rss_mb": round(rss / 1024, 1),
        }  # fmt: skip
        # The same round split over two workers of one shared-subscription group.
        side = {}
        fleet = threading.Thread(
            target=_gateways, args=(broker.port, pub, base, gateways, f"r{n}s", side)
        )
        fleet.start()
        parts = [work / f"part-{n}-{i}.npz" for i in range(2)]
        finished: list[tuple[int, float, int, str]] = []
        argvs = _worker_argvs(common, n, parts, bundle, key, split_timeout_s)
        jobs = [threading.Thread(target=lambda a: finished.append(_federate(a)), args=(argv,))
                for argv in argvs]  # fmt: skip
        for j in jobs:
            j.start()
        for j in jobs:
            j.join()
        fleet.join()
        if any(f[0] != 0 for f in finished) or "error" in side:
            raise RuntimeError(f"a split worker failed: {side.get('error')}")
        merged = work / f"merged-{n}"
        rc, _, _, _ = _federate(["federate", "--run", str(run), "--round", f"r{n}s", "--out",
                                 str(merged), "--merge", *map(str, parts)])  # fmt: skip
        shares = [sum(1 for _ in (work / f"part-{n}-{i}.npz.deltas").iterdir()) for i in range(2)]
        mrep = json.loads((merged / "federate.json").read_text()) if rc == 0 else {}
        row["split_two_workers"] = {
            "merge_exit": rc, "deltas_per_worker": shares, "accepted": mrep.get("accepted"),
            "clip_bounds": mrep.get("clip_bounds"),
            "worker_peak_rss_mb": [round(f[2] / 1024, 1) for f in finished],
            "max_abs_weight_diff_vs_single": _max_diff(out, merged) if rc == 0 else None,
        }  # fmt: skip
    finally:
        broker.stop()
    return row


def _worker_argvs(
    common: list[str], n: int, parts: list[Path], bundle: Path, key: Path, timeout_s: float
) -> list[list[str]]:
    out = []
    for i, part in enumerate(parts):
        argv = [*common, "--round", f"r{n}s", "--partial-out", str(part),
                "--round-timeout", str(timeout_s)]  # fmt: skip
        if i == 0:
            argv += ["--bundle", str(bundle), "--key", str(key)]  # this one announces
        out.append(argv)
    return out


def _max_diff(a: Path, b: Path) -> float:
    """Largest difference between two runs' float weights."""
    from export.run_dir import load_run
    from export.train_weights import keras_weight_set

    wa, wb = (keras_weight_set(load_run(r).model).flat() for r in (a, b))
    return float(np.max(np.abs(wa - wb)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gateways", type=int, nargs="+", default=[200, 1000])
    ap.add_argument("--run", type=Path, help="base run (with --bundle and --key; else trained)")
    ap.add_argument("--bundle", type=Path, help="the base run's bundle")
    ap.add_argument("--key", type=Path, help="the fleet key that signed --bundle")
    ap.add_argument(
        "--split-timeout",
        type=float,
        default=SPLIT_TIMEOUT_S,
        help="round timeout of the split workers, which wait for it (default %(default)g s)",
    )
    ap.add_argument("--out", type=Path, default=ROOT / "bench/results/federate_broker.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="federate-bench-") as tmp:
        work = Path(tmp)
        if args.run is None:
            bundle, _ = make_bundle(work / "model", history_rows=20_000, epochs=5)
            run, key = work / "model" / "run", work / "model" / "keys" / "signing.key"
        else:
            run, bundle, key = args.run, args.bundle, args.key
        rows = [one_size(n, run, bundle, key, work, args.split_timeout) for n in args.gateways]
    result = {"what": __doc__.splitlines()[0], "machine": machine(), "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
