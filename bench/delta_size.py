"""Bytes on the wire of one signed model delta, over the top-k fraction, against fp32 weights.

A realistic delta, not random numbers: the default ``dense`` autoencoder (5 channels x 32 steps,
128-64-16 bottleneck, ~60k parameters) is trained in numpy (``edge_agent.learn.dense``, as the
gateway trains) on the reference simulated compressor, then fine-tuned for two local epochs on
a machine that differs (higher pressure set-points, warmer room, noisier sensors, worn motor).
The delta is the difference of the two. For each fraction it records the envelope's bytes
(framing, header, signature included) and the ratio to the fp32 weights, the index coding
chosen, the int8 error of per-tensor scales against one scale for the whole delta, the time
to encode and decode, and how much of the update's energy the sent part carries.

    python bench/delta_size.py [--out bench/results/delta_size.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import zlib
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_agent.learn.delta import ZLIB_LEVEL, decode_delta, encode_delta
from edge_agent.learn.dense import AdamSettings, AdamState, DenseAutoencoder, train_step
from edge_agent.learn.sparse import CODING_BITMAP, SparseDelta, pack, sparsify
from edge_agent.learn.weights import WeightSet
from edge_agent.simulator import simulate_plant
from edge_agent.simulator.profile import MachineProfile

ROOT = Path(__file__).resolve().parents[1]
FRACTIONS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
WINDOW = 32
STRIDE = 2
UNITS = (128, 64, 16, 64, 128)
GLOBAL_EPOCHS = 5
LOCAL_EPOCHS = 2
BATCH = 32
LEARNING_RATE = 1e-3
ROWS = 20_000
NORMAL_SHARE = 0.2  # the simulator's fault-free warm-up share: the normal history used here
FP32_BYTES = 4
TIMING_REPEATS = 20
SCALE_BYTES = 4  # one float32 per tensor at the head of the body
DEVICE = MachineProfile(
    pressure_offset_bar=1.0, ambient_offset_c=8.0, noise_scale=1.5, current_offset_a=2.0
)


def windows(values: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    z = ((values - mean) / std).astype(np.float32)
    starts = range(0, z.shape[0] - WINDOW + 1, STRIDE)
    return np.stack([z[s : s + WINDOW] for s in starts])


def glorot(n_in: int, n_out: int, rng: np.random.Generator) -> np.ndarray:
    limit = np.sqrt(6.0 / (n_in + n_out))
    return rng.uniform(-limit, limit, (n_in, n_out))


def train(model: DenseAutoencoder, x: np.ndarray, epochs: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    state = AdamState.zeros(model.params)
    settings = AdamSettings(learning_rate=LEARNING_RATE)
    for _ in range(epochs):
        order = rng.permutation(x.shape[0])
        for b in range(0, x.shape[0], BATCH):
            train_step(model, x[order[b : b + BATCH]], state, settings)


def realistic_delta(rows: int = ROWS, global_epochs: int = GLOBAL_EPOCHS) -> tuple[
    WeightSet, np.ndarray
]:
    ref = simulate_plant(rows=rows, seed=0)
    normal = ref.values[: int(NORMAL_SHARE * rows)]
    mean, std = normal.mean(axis=0), normal.std(axis=0) + 1e-6
    x_ref = windows(normal, mean, std)
    width = x_ref.shape[1] * x_ref.shape[2]
    dims = (width, *UNITS, width)
    rng = np.random.default_rng(0)
    names: list[str] = []
    arrays: list[np.ndarray] = []
    for i in range(len(dims) - 1):
        names += [f"dense_{i}/kernel", f"dense_{i}/bias"]
        arrays += [glorot(dims[i], dims[i + 1], rng), np.zeros(dims[i + 1])]
    acts = ["relu"] * len(UNITS) + ["linear"]
    model = DenseAutoencoder(WeightSet(tuple(names), tuple(arrays)), acts)
    train(model, x_ref, global_epochs, seed=1)
    base = model.weights()
    dev = simulate_plant(rows=rows, seed=5, profile=DEVICE)
    train(model, windows(dev.values[: int(NORMAL_SHARE * rows)], mean, std), LOCAL_EPOCHS, seed=2)
    return base, model.weights().subtract(base).flat()


def rel_error(sparse: SparseDelta, v: np.ndarray) -> float:
    exact = v[sparse.indices].astype(np.float64)
    return float(np.linalg.norm(sparse.values() - exact) / np.linalg.norm(exact))


def measure(
    base: WeightSet, v: np.ndarray, fraction: float, key: Ed25519PrivateKey
) -> dict[str, object]:
    sizes = tuple(int(a.size) for a in base.arrays)
    per_tensor = sparsify(v, sizes, fraction)
    per_delta = sparsify(v, (base.size,), fraction)
    args = dict(base=base, machine_id="compressor-07", model_version="20261204T200015Z-2b421677",
                round_id="r0001", samples=1984, epochs=LOCAL_EPOCHS, key=key,
                created_at="2026-12-05T10:00:00Z")
    t0 = time.perf_counter()
    for _ in range(TIMING_REPEATS):
        payload = encode_delta(per_tensor, **args)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    for _ in range(TIMING_REPEATS):
        decode_delta(payload, public_keys={"compressor-07": key.public_key()},
                     expected_base_fingerprint=base.fingerprint(),
                     tensor_sizes=base.tensor_sizes)
    t2 = time.perf_counter()
    sent = per_tensor.dense().astype(np.float64)
    coding = pack(per_tensor)[SCALE_BYTES * len(sizes) + per_tensor.k]  # after scales and codes
    return {
        "fraction": fraction,
        "k": per_tensor.k,
        "wire_bytes": len(payload),
        "ratio_vs_fp32": round(base.size * FP32_BYTES / len(payload), 1),
        "index_coding": "bitmap" if coding == CODING_BITMAP else "varint_gaps",
        "int8_rel_error_per_tensor": round(rel_error(per_tensor, v), 5),
        "int8_rel_error_per_delta": round(rel_error(per_delta, v), 5),
        "body_bytes_per_tensor": len(zlib.compress(pack(per_tensor), ZLIB_LEVEL)),
        "body_bytes_per_delta": len(zlib.compress(pack(per_delta), ZLIB_LEVEL)),
        "energy_sent": round(float(np.dot(sent, sent) / np.dot(v, v.astype(np.float64))), 4),
        "encode_ms": round((t1 - t0) / TIMING_REPEATS * 1e3, 3),
        "decode_ms": round((t2 - t1) / TIMING_REPEATS * 1e3, 3),
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/delta_size.json")
    parser.add_argument("--rows", type=int, default=ROWS, help="simulated rows per machine")
    parser.add_argument("--epochs", type=int, default=GLOBAL_EPOCHS,
                        help="epochs of the global model")
    args = parser.parse_args(argv)
    base, v = realistic_delta(args.rows, args.epochs)
    key = Ed25519PrivateKey.generate()
    rows = [measure(base, v, f, key) for f in FRACTIONS]
    result = {
        "what": __doc__.splitlines()[0],
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "rows_per_machine": args.rows,
        "global_epochs": args.epochs,
        "local_epochs": LOCAL_EPOCHS,
        "parameters": base.size,
        "fp32_bytes": base.size * FP32_BYTES,
        "delta_l2_norm": round(float(np.linalg.norm(v)), 6),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for r in rows:
        print(r)
    return result


if __name__ == "__main__":
    main()
