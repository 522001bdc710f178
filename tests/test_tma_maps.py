"""The TMA maps of the expert weights in every layout (no GPU: the encoder is replaced by a
recorder). The maps' strides are what reads each layout in place, so they are checked against
the element offsets numpy computes for the same array."""

from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest

from moefuse import _tma
from moefuse._validate import WeightLayout

E, H, INTER = 3, 96, 40


@pytest.fixture
def encoded(monkeypatch):
    calls = []
    monkeypatch.setattr(
        _tma, "_encode", lambda ptr, dims, strides, box, bf16: calls.append((dims, strides, box))
    )
    return calls


def fake_weights(shape):
    array = np.empty(shape, dtype=ml_dtypes.bfloat16)
    return SimpleNamespace(shape=shape, dtype=array.dtype, data=SimpleNamespace(ptr=0)), array


def element(dims, strides, coords):
    """The element offset of `coords` (innermost first) through a map's byte strides."""
    byte_strides = (2, *strides)
    return sum(c * s for c, s in zip(coords, byte_strides, strict=True)) // 2


@pytest.mark.parametrize("interleaved", [False, True])
def test_k_major_gated_map_finds_gate_and_up_rows(encoded, interleaved):
    w, array = fake_weights((E, 2 * INTER, H))
    _tma.weights_desc(w, 32, 64, True, WeightLayout(interleaved=interleaved))
    ((dims, strides, box),) = encoded
    assert dims == (H, INTER, 2, E) and box == (64, 32, 1, 1)
    for e, j, half, k in ((0, 0, 1, 5), (2, INTER - 1, 0, H - 1), (1, 7, 1, 0)):
        row = 2 * j + half if interleaved else half * INTER + j
        want = np.ravel_multi_index((e, row, k), array.shape)
        assert element(dims, strides, (k, j, half, e)) == want


def test_mn_major_maps(encoded):
    w1, a1 = fake_weights((E, H, 2 * INTER))
    _tma.weights_desc(w1, 64, 64, True, WeightLayout(transposed=True))
    _tma.weights_desc(w1, 64, 64, False, WeightLayout(transposed=True, interleaved=True))
    w2, a2 = fake_weights((E, INTER, H))
    _tma.weights_desc(w2, 64, 64, False, WeightLayout(transposed=True))
    (halves, pairs, down) = encoded
    assert halves[0] == (INTER, H, 2, E) and halves[2] == (64, 64, 1, 1)
    e, j, k = 2, 11, 30
    for half in (0, 1):
        want = np.ravel_multi_index((e, k, half * INTER + j), a1.shape)
        assert element(halves[0], halves[1], (j, k, half, e)) == want
    assert pairs[0] == (2 * INTER, H, E) and pairs[2] == (64, 64, 1)
    assert element(pairs[0], pairs[1], (2 * j + 1, k, e)) == np.ravel_multi_index((e, k, 2 * j + 1), a1.shape)
    assert down[0] == (H, INTER, E)
    assert element(down[0], down[1], (k, j, e)) == np.ravel_multi_index((e, j, k), a2.shape)


@pytest.mark.parametrize("interleaved", [False, True])
def test_swapped_gate_up_groups(encoded, interleaved):
    w, array = fake_weights((E, 2 * INTER, H))
    _tma.gate_up_groups_desc(w, 4, 8, 64, interleaved)
    ((dims, strides, box),) = encoded
    assert dims == (H, 8, 2, INTER // 8, E) and box == (64, 8, 2, 4, 1)
    e, group, r, k = 1, 3, 5, 17
    for half in (0, 1):
        j = 8 * group + r
        row = 2 * j + half if interleaved else half * INTER + j
        assert element(dims, strides, (k, r, half, group, e)) == np.ravel_multi_index(
            (e, row, k), array.shape
        )


def fake_array(shape, dtype):
    array = np.empty(shape, dtype=dtype)
    fake = SimpleNamespace(shape=shape, dtype=array.dtype, size=array.size, data=SimpleNamespace(ptr=0))
    return fake, array


@pytest.fixture
def encoded_types(monkeypatch):
    calls = []
    monkeypatch.setattr(
        _tma, "_encode", lambda ptr, dims, strides, box, *rest: calls.append((dims, strides, box, rest))
    )
    return calls


@pytest.mark.parametrize("interleaved", [False, True])
def test_e4m3_weights_map_has_byte_strides(encoded_types, interleaved):
    """fp8 weights travel as uint8 bits: strides in bytes of 1-byte elements, a 128-wide K box."""
    w, array = fake_array((E, 2 * INTER, H), np.uint8)
    _tma.weights_desc(w, 64, 128, True, WeightLayout(interleaved=interleaved))
    ((dims, strides, box, rest),) = encoded_types
    assert rest == ("UINT8",) and dims == (H, INTER, 2, E) and box == (128, 64, 1, 1)
    byte_strides = (1, *strides)
    for e, j, half, k in ((0, 0, 1, 5), (2, INTER - 1, 0, H - 1)):
        row = 2 * j + half if interleaved else half * INTER + j
        got = sum(c * s for c, s in zip((k, j, half, e), byte_strides, strict=True))
        assert got == np.ravel_multi_index((e, row, k), array.shape)


def test_tile_maps_of_each_element_type(encoded_types):
    for dtype, name in (
        (ml_dtypes.bfloat16, "BFLOAT16"),
        (np.float16, "FLOAT16"),
        (np.uint8, "UINT8"),
        (np.float32, "FLOAT32"),
    ):
        m, _ = fake_array((256, 96), dtype)
        _tma.tile_desc(m, 128, 64)
        dims, strides, box, rest = encoded_types.pop()
        assert dims == (96, 256) and strides == (96 * np.dtype(dtype).itemsize,) and box == (64, 128)
        assert rest == (name,)
    with pytest.raises(TypeError, match="no TMA data type"):
        _tma.tile_desc(fake_array((4, 4), np.int64)[0], 4, 4)


def test_h_scale_map(encoded_types):
    """h_s [ceil(I/64), rows] f32 seen as (row, group), box (tile rows, groups), unswizzled."""
    h_s, _ = fake_array((INTER // 8, 256), np.float32)
    _tma.scale_desc(h_s, 128, 2)
    ((dims, strides, box, rest),) = encoded_types
    assert dims == (256, INTER // 8) and strides == (256 * 4,) and box == (128, 2)
    assert rest == ("FLOAT32", False)
