"""WeightSet: flat round trip, arithmetic, npz encoding, fingerprint and the errors it gives."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

from edge_agent.learn.weights import NAMES_KEY, WeightSet


def _weights(seed: int = 0) -> WeightSet:
    rng = np.random.default_rng(seed)
    names = ("dense_0/kernel", "dense_0/bias", "dense_1/kernel", "dense_1/bias")
    shapes = ((6, 4), (4,), (4, 6), (6,))
    return WeightSet(names, tuple(rng.normal(size=s).astype(np.float32) for s in shapes))


def test_arrays_are_float32_contiguous_and_read_only() -> None:
    source = np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))
    ws = WeightSet(("k",), (source,))
    (array,) = ws.arrays
    assert array.dtype == np.float32
    assert array.flags.c_contiguous
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0] = 1.0
    source[0, 0] = 99.0  # a copy was taken
    assert ws.arrays[0][0, 0] == 0.0


def test_flat_round_trip_keeps_order_and_shapes() -> None:
    ws = _weights()
    flat = ws.flat()
    assert flat.dtype == np.float32
    assert flat.shape == (ws.size,)
    assert ws.size == 24 + 4 + 24 + 6
    assert np.array_equal(flat[:24], ws.arrays[0].ravel())
    back = WeightSet.from_flat(ws, flat)
    assert back.names == ws.names
    assert back.shapes == ws.shapes
    assert back.fingerprint() == ws.fingerprint()
    with pytest.raises(ValueError, match="58 values"):
        WeightSet.from_flat(ws, flat[:-1])


def test_subtract_add_and_norm() -> None:
    a, b = _weights(0), _weights(1)
    delta = a.subtract(b)
    assert np.allclose(delta.flat(), a.flat() - b.flat())
    assert np.allclose(b.add(delta).flat(), a.flat(), atol=1e-6)
    assert delta.l2_norm() == pytest.approx(float(np.linalg.norm(delta.flat().astype(np.float64))))


def test_mismatched_sets_name_the_tensor() -> None:
    a = _weights()
    renamed = WeightSet(
        ("dense_0/kernel", "dense_0/bias", "dense_9/kernel", "dense_1/bias"), a.arrays
    )
    with pytest.raises(ValueError, match="'dense_1/kernel' vs 'dense_9/kernel'"):
        a.subtract(renamed)
    reshaped = WeightSet(a.names, (a.arrays[0].reshape(4, 6), *a.arrays[1:]))
    with pytest.raises(ValueError, match="'dense_0/kernel': shape"):
        a.add(reshaped)
    with pytest.raises(ValueError, match="4 tensors vs 1"):
        a.subtract(WeightSet(("x",), (np.zeros(2),)))


@pytest.mark.parametrize(
    ("names", "arrays", "message"),
    [
        (("a", "b"), (np.zeros(2),), "2 names but 1 arrays"),
        (("a", "a"), (np.zeros(2), np.zeros(2)), "'a' appears twice"),
        (("",), (np.zeros(2),), "non-empty string"),
        (("s",), (np.float32(1.0),), "'s': a scalar"),
        (("n",), (np.array([1.0, np.nan]),), "'n': contains NaN"),
        ((), (), "no tensors"),
    ],
)
def test_bad_sets_are_refused(
    names: tuple[str, ...], arrays: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        WeightSet(names, arrays)  # type: ignore[arg-type]


def test_npz_round_trip_is_exact_and_deterministic() -> None:
    ws = _weights()
    data = ws.to_npz_bytes()
    assert data == _weights().to_npz_bytes()
    back = WeightSet.from_npz_bytes(data)
    assert back.names == ws.names
    assert all(np.array_equal(x, y) for x, y in zip(back.arrays, ws.arrays, strict=True))
    assert back.fingerprint() == ws.fingerprint()
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:  # a plain npz for any reader
        assert list(npz[NAMES_KEY]) == list(ws.names)


def test_fingerprint_sees_names_shapes_and_values() -> None:
    ws = _weights()
    prints = {ws.fingerprint()}
    prints.add(WeightSet(("x", *ws.names[1:]), ws.arrays).fingerprint())
    prints.add(WeightSet(ws.names, (ws.arrays[0].reshape(4, 6), *ws.arrays[1:])).fingerprint())
    bumped = ws.flat()
    bumped[-1] = np.nextafter(bumped[-1], np.float32(np.inf))
    prints.add(WeightSet.from_flat(ws, bumped).fingerprint())
    assert len(prints) == 4


def _npz(members: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **members)  # type: ignore[arg-type]
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip at all", r"w\.npz: not a readable npz"),
        (_npz({"k": np.zeros(2, np.float32)}), "missing the '__names__'"),
        (
            _npz({NAMES_KEY: np.array(["k", "b"]), "k": np.zeros(2, np.float32)}),
            "'b' is named but not stored",
        ),
        (
            _npz(
                {
                    NAMES_KEY: np.array(["k"]),
                    "k": np.zeros(2, np.float32),
                    "z": np.zeros(1, np.float32),
                }
            ),
            "'z' is stored but not named",
        ),
        (
            _npz({NAMES_KEY: np.array(["k"]), "k": np.zeros(2, np.float64)}),
            "'k' is float64, expected float32",
        ),
        (
            _npz({NAMES_KEY: np.array(["k"]), "k": np.array([np.inf], np.float32)}),
            r"w\.npz: weight tensor 'k': contains NaN",
        ),
    ],
)
def test_malformed_npz_names_the_source(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeightSet.from_npz_bytes(data, source="w.npz")


def test_pickled_object_arrays_are_refused() -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        member = io.BytesIO()
        np.lib.format.write_array(member, np.array([{"a": 1}], dtype=object), allow_pickle=True)
        archive.writestr(f"{NAMES_KEY}.npy", member.getvalue())
    with pytest.raises(ValueError, match=r"w\.npz: not a readable npz"):
        WeightSet.from_npz_bytes(buffer.getvalue(), source="w.npz")
