"""fp8 on the host, no GPU: the scale formats, the weight helpers, the intake of fp8 arrays, the
argument checks (each error names its argument) and the float32-exact reference quantiser."""

import sys
from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest

from moefuse import _validate, fp8, reference
from moefuse._validate import WeightLayout
from moefuse.fp8 import Fp8Format

BF16, E4M3 = ml_dtypes.bfloat16, np.dtype(ml_dtypes.float8_e4m3fn)
E, H, INTER, T, K = 3, 320, 192, 37, 2  # H: 2.5 blocks of 128; 2I = 384: 3 blocks


def e4m3_table() -> np.ndarray:
    """The 254 finite e4m3 values, ascending (+0 once)."""
    values = np.arange(256, dtype=np.uint8).view(E4M3).astype(np.float32)
    return np.unique(values[np.isfinite(values)])


# ---- formats ------------------------------------------------------------------------------------
def test_formats():
    assert Fp8Format() == Fp8Format("block", 128)
    assert Fp8Format("block").scale_shape((8, 28672, 4096)) == (8, 224, 32)
    assert Fp8Format("block").scale_shape((8, 4096, 2880)) == (8, 32, 23)  # a partial last block
    assert Fp8Format("tensor").scale_shape((8, 28672, 4096)) == (8,)
    assert Fp8Format.of(np.empty((8, 224, 32))).kind == "block"
    assert Fp8Format.of(np.empty(8)).kind == Fp8Format.of(np.empty((8, 1, 1))).kind == "tensor"
    assert (Fp8Format("block").x_group(7168), Fp8Format("tensor").x_group(7168)) == (128, 7168)
    with pytest.raises(ValueError, match=r"format must be one of \('block', 'tensor'\), got 'blocks'"):
        Fp8Format("blocks")
    with pytest.raises(ValueError, match="fp8 weight blocks must be 128 x 128, got 64"):
        Fp8Format("block", 64)


# ---- the e4m3 conversion and the reference quantiser --------------------------------------------
def test_satfinite_conversion_saturates_and_rounds_ties_to_even():
    got = reference.e4m3_satfinite([464, 465, -1e9, np.inf, -np.inf, 447, 1 + 1 / 16, 1 + 3 / 16])
    np.testing.assert_array_equal(got.astype(np.float32), [448, 448, -448, 448, -448, 448, 1.0, 1.25])
    # subnormals are multiples of 2^-9; 2^-10 and 3 * 2^-10 are ties
    got = reference.e4m3_satfinite([2**-10, 3 * 2**-10, 2**-9 * 7.5, 2**-6 - 2**-11])
    np.testing.assert_array_equal(got.astype(np.float32), [0, 2**-8, 2**-9 * 8, 2**-6])
    assert np.isnan(reference.e4m3_satfinite([np.nan]).astype(np.float32)).all()
    # without the clip, ml_dtypes gives NaN past 464 (e4m3fn has no inf): why the reference clips
    assert np.isnan(np.float32(465).astype(E4M3).astype(np.float32))


def test_e4m3_bits_are_ml_dtypes_rounding(rng):
    """moefuse.fp8's integer conversion (numpy or CuPy) against ml_dtypes: every value, every
    midpoint and its neighbours, and fresh values over the whole range."""
    table = e4m3_table()
    mids = ((table[1:].astype(np.float64) + table[:-1]) / 2).astype(np.float32)
    up, down = np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(-np.inf))
    fresh = rng.standard_normal(200_000) * np.exp2(rng.uniform(-16, 9, 200_000))
    values = np.clip(np.concatenate([table, -table, mids, -mids, up, down, fresh]), -448, 448).astype(
        np.float32
    )
    np.testing.assert_array_equal(fp8.e4m3_bits(values), reference.e4m3_satfinite(values).view(np.uint8))
    assert fp8.e4m3_bits(np.float32([np.nan]))[0] == 0x7F


@pytest.mark.parametrize("dtype", [np.float64, np.float32, BF16, np.float16])
def test_e4m3_values_of_every_code(dtype):
    codes = np.arange(256, dtype=np.uint8)
    got = fp8.e4m3_values(codes, dtype)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got.astype(np.float64), codes.view(E4M3).astype(np.float64))


def test_quantize_groups_recipe(rng):
    """A group's largest magnitude maps to +-448 and its scale is amax / 448, in float32."""
    x = rng.standard_normal((4, 256)).astype(np.float32)
    q, s = reference.quantize_groups(x, 128)
    assert q.dtype == E4M3 and s.dtype == np.float32 and s.shape == (4, 2)
    amax = np.abs(x.reshape(4, 2, 128)).max(axis=2)
    np.testing.assert_array_equal(s, amax / np.float32(448))
    peaks = np.abs(q.astype(np.float32).reshape(4, 2, 128)).max(axis=2)
    np.testing.assert_array_equal(peaks, 448)
    inverse = np.float32(448) / amax  # float32 division, as the kernel's IEEE `/`
    want = reference.e4m3_satfinite(x.reshape(4, 2, 128) * inverse[:, :, None]).reshape(4, 256)
    np.testing.assert_array_equal(q.view(np.uint8), want.view(np.uint8))


def test_quantize_groups_zero_and_tiny_groups_use_the_floor(rng):
    x = np.zeros((2, 256), np.float32)
    x[1, 128:] = rng.uniform(-5e-5, 5e-5, 128)  # below the 1e-4 floor
    q, s = reference.quantize_groups(x, 128)
    np.testing.assert_array_equal(s, np.float32(1e-4) / np.float32(448))
    assert not q[0].view(np.uint8).any()
    np.testing.assert_array_equal(
        q[1, 128:].astype(np.float32), reference.e4m3_satfinite(x[1, 128:] * 4.48e6)
    )


def test_quantize_groups_partial_last_group(rng):
    """H = 200: groups of 128 and 72; the last group's amax is over its own 72 values."""
    x = rng.standard_normal((3, 200)).astype(np.float32)
    x[:, :128] *= 1000.0
    q, s = reference.quantize_groups(x, 128)
    assert s.shape == (3, 2)
    np.testing.assert_array_equal(s[:, 1], np.abs(x[:, 128:]).max(axis=1) / np.float32(448))
    q_alone, s_alone = reference.quantize_groups(x[:, 128:], 128)
    np.testing.assert_array_equal(q[:, 128:].view(np.uint8), q_alone.view(np.uint8))
    np.testing.assert_array_equal(s[:, 1:], s_alone)


def test_quantize_groups_non_finite(rng):
    """A NaN stays in its element and is left out of its group's amax; an inf makes its group's
    scale inf, its q NaN and every other q of the group 0, so the group dequantises to NaN; other
    groups are untouched. A group of NaN only gets the floor."""
    x = rng.standard_normal((3, 256)).astype(np.float32)
    clean_q, clean_s = reference.quantize_groups(x, 128)
    x[0, 5], x[1, 130], x[2, :128] = np.nan, -np.inf, np.nan
    q, s = reference.quantize_groups(x, 128)
    values = q.astype(np.float32)
    assert np.isnan(values[0, 5]) and np.isnan(values[0]).sum() == 1
    amax = np.nanmax(np.abs(x[0, :128]))
    assert s[0, 0] == amax / np.float32(448)
    assert s[1, 1] == np.inf and np.isnan(values[1, 130]) and (values[1, 128:130] == 0).all()
    assert np.isnan(reference.dequantize_groups(q, s, 128)[1, 128:]).all()
    assert s[2, 0] == np.float32(1e-4) / np.float32(448) and np.isnan(values[2, :128]).all()
    np.testing.assert_array_equal(q[:, 128:][[0, 2]].view(np.uint8), clean_q[:, 128:][[0, 2]].view(np.uint8))
    np.testing.assert_array_equal(s[[0, 2], 1], clean_s[[0, 2], 1])
    np.testing.assert_array_equal(s[1, 0], clean_s[1, 0])


@pytest.mark.parametrize("dtype", [BF16, np.float16, np.float32])
def test_quantize_groups_round_trip_is_within_half_an_e4m3_step(rng, dtype):
    """Each value comes back within half a step: 2^-4 of itself where q is normal, 2^-10 of the
    scale where it is subnormal. Over the whole array ~2.6e-2 relative (e4m3 keeps 3 bits)."""
    x = (rng.standard_normal((16, 1000)) * 10.0 ** rng.uniform(-2, 4, (16, 1))).astype(dtype)
    q, s = reference.quantize_groups(x, 128)
    back = reference.dequantize_groups(q, s, 128)
    x64 = np.asarray(x, dtype=np.float64)
    bound = np.abs(x64) * 2**-4 + np.repeat(s.astype(np.float64), 128, axis=1)[:, :1000] * 2**-10
    assert np.all(np.abs(back - x64) <= bound)
    assert reference.relative_error(back, x64) < 0.035


# ---- the weight helpers -------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["block", "tensor"])
def test_quantize_weights_is_the_recipe_per_block(rng, fmt):
    """Each 128 x 128 block (partial at the edges) or each matrix, as quantize_groups quantises it
    laid out as one group, and back within e4m3's error (~2.6e-2 relative)."""
    w = (rng.standard_normal((E, 200, H)) * 10.0 ** rng.uniform(-3, 1, (E, 1, 1))).astype(BF16)
    w[1, :128, :128] = 0  # a zero block
    q, scale = fp8.quantize_weights(w, fmt)
    assert q.dtype == E4M3 and scale.dtype == np.float32
    assert scale.shape == Fp8Format(fmt).scale_shape(w.shape)
    whole = slice(None)
    corners = [(0, slice(0, 128), slice(0, 128)), (2, slice(128, None), slice(256, None))]  # 72 x 64
    for e, rows, cols in corners if fmt == "block" else [(0, whole, whole), (2, whole, whole)]:
        block = w[e, rows, cols]
        want_q, want_s = reference.quantize_groups(block.reshape(1, -1), block.size)
        np.testing.assert_array_equal(q[e, rows, cols].view(np.uint8).reshape(1, -1), want_q.view(np.uint8))
        got_s = scale[e] if fmt == "tensor" else scale[e, rows.start // 128, cols.start // 128]
        assert got_s == want_s[0, 0]
    if fmt == "block":
        assert (
            scale[1, 0, 0] == np.float32(1e-4) / np.float32(448) and not q[1, :128, :128].view(np.uint8).any()
        )
    back = fp8.dequantize_weights(q, scale, np.float64)
    assert reference.relative_error(back, w) < 0.035


def test_quantize_weights_non_finite_blocks(rng):
    """A NaN or an inf in a block makes its scale NaN or inf and the whole block dequantise to NaN;
    the other blocks are untouched."""
    w = rng.standard_normal((1, 256, 256)).astype(np.float32)
    clean_q, clean_s = fp8.quantize_weights(w)
    w[0, 3, 4], w[0, 200, 200] = np.nan, np.inf
    with np.errstate(invalid="ignore"):
        q, scale = fp8.quantize_weights(w)
        back = fp8.dequantize_weights(q, scale, np.float64)
    assert np.isnan(scale[0, 0, 0]) and scale[0, 1, 1] == np.inf
    assert np.isnan(back[0, :128, :128]).all() and np.isnan(back[0, 128:, 128:]).all()
    for rows, cols in ((slice(0, 128), slice(128, None)), (slice(128, None), slice(0, 128))):
        np.testing.assert_array_equal(q[0, rows, cols].view(np.uint8), clean_q[0, rows, cols].view(np.uint8))
    np.testing.assert_array_equal(scale[0, [0, 1], [1, 0]], clean_s[0, [0, 1], [1, 0]])


def test_dequantize_weights_is_q_times_scale(rng):
    codes = rng.integers(0, 256, (2, 130, 260), dtype=np.uint8)
    codes[(codes & 0x7F) == 0x7F] = 0x10  # no NaN codes
    scale = rng.uniform(0.5, 2.0, (2, 2, 3)).astype(np.float32)
    got = fp8.dequantize_weights(codes.view(E4M3), scale, np.float64)
    want = codes.view(E4M3).astype(np.float64) * np.repeat(np.repeat(scale, 128, 1), 128, 2)[:, :130, :260]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(fp8.dequantize_weights(codes, scale, np.float64), want)  # uint8 bits
    assert fp8.dequantize_weights(codes, scale, BF16).dtype == BF16
    per_tensor = scale[:, 0, 0]
    want = codes.view(E4M3).astype(np.float64) * per_tensor[:, None, None].astype(np.float64)
    np.testing.assert_array_equal(fp8.dequantize_weights(codes, per_tensor, np.float64), want)
    np.testing.assert_array_equal(fp8.dequantize_weights(codes, per_tensor[:, None, None], np.float64), want)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (
            lambda: fp8.quantize_weights(np.empty((4, 4), BF16)),
            ValueError,
            r"w must be 3-D \[E, rows, cols\]",
        ),
        (
            lambda: fp8.quantize_weights(np.empty((1, 4, 4), np.int32)),
            TypeError,
            "w must be bfloat16, float16 or float32",
        ),
        (lambda: fp8.quantize_weights(np.empty((1, 4, 4), BF16), "row"), ValueError, "format must be one of"),
        (
            lambda: fp8.dequantize_weights(np.empty((1, 4, 4), np.uint8), np.empty((1, 2, 1), np.float32)),
            ValueError,
            r"scale must be \(1, 1, 1\) for q \(1, 4, 4\), got \(1, 2, 1\)",
        ),
        (
            lambda: fp8.dequantize_weights(np.empty((1, 4, 4), BF16), np.empty(1, np.float32)),
            TypeError,
            "q must be 3-D float8_e4m3fn",
        ),
        (
            lambda: fp8.dequantize_weights(np.empty((1, 4, 4), np.uint8), np.empty(1, np.float32), np.int8),
            TypeError,
            "dtype must be float64, float32, bfloat16 or float16",
        ),
    ],
)
def test_weight_helper_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- intake -------------------------------------------------------------------------------------
def device_bytes(shape):
    """A CuPy uint8 array over made-up device memory: views need no GPU, allocations would."""
    import cupy

    memory = cupy.cuda.UnownedMemory(0x10000, int(np.prod(shape)), None, 0)
    return cupy.ndarray(shape, np.uint8, memptr=cupy.cuda.MemoryPointer(memory, 0))


def test_intake_takes_cupy_float8_as_its_bits():
    bits = device_bytes((4, 64))
    taken = fp8.as_e4m3_device_array(bits.view(E4M3), "w1")
    assert taken.dtype == np.uint8 and taken.shape == (4, 64) and taken.data.ptr == bits.data.ptr
    assert fp8.as_e4m3_device_array(bits, "w1") is bits
    strided = fp8.as_e4m3_device_array(bits.view(E4M3)[:, ::2], "w1")  # a view, left for the checks
    assert strided.dtype == np.uint8 and strided.strides == (64, 2)


def test_intake_views_torch_float8_as_uint8_without_importing_torch(monkeypatch):
    """A stand-in torch module: float8_e4m3fn tensors cross as `view(torch.uint8)` (CuPy's DLPack
    has no float8 code), other float8 formats are refused by name."""
    bits = device_bytes((4, 64))

    class Tensor:
        def __init__(self, dtype):
            self.dtype = dtype

        def view(self, dtype):
            assert dtype == "torch.uint8"
            return bits

    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(Tensor=Tensor, uint8="torch.uint8"))
    assert fp8.as_e4m3_device_array(Tensor("torch.float8_e4m3fn"), "w2") is bits
    with pytest.raises(
        TypeError, match=r"w2 must be float8_e4m3fn \(or its bits as uint8\), got float8_e5m2"
    ):
        fp8.as_e4m3_device_array(Tensor("torch.float8_e5m2"), "w2")


def test_intake_refuses_other_float8_and_host_arrays():
    with pytest.raises(
        TypeError, match=r"w1 must be float8_e4m3fn \(or its bits as uint8\), got float8_e4m3fnuz"
    ):
        fp8.as_e4m3_device_array(device_bytes((2, 16)).view(ml_dtypes.float8_e4m3fnuz), "w1")
    with pytest.raises(TypeError, match="w1 must be a GPU array"):
        fp8.as_e4m3_device_array(np.zeros((2, 16), E4M3), "w1")


# ---- argument checks ----------------------------------------------------------------------------
def fp8_weights(e=E, h=H, i=INTER, dtype=E4M3, layout=_validate.STANDARD_LAYOUT):
    w1_shape, w2_shape = ((e, h, 2 * i), (e, i, h)) if layout.transposed else ((e, 2 * i, h), (e, h, i))
    return np.empty(w1_shape, dtype), np.empty(w2_shape, dtype)


def block_scales(w1, w2):
    return tuple(np.empty(Fp8Format("block").scale_shape(w.shape), np.float32) for w in (w1, w2))


def test_fp8_weights_that_pass():
    w1, w2 = fp8_weights()
    dims = _validate.check_fp8_weights(w1, w2, *block_scales(w1, w2))
    assert dims == _validate.Fp8Dims(E, H, INTER, Fp8Format("block"))
    w1u, w2u = fp8_weights(dtype=np.uint8)
    for scales in ((np.empty(E, np.float32),) * 2, (np.empty((E, 1, 1), np.float32),) * 2):
        assert _validate.check_fp8_weights(w1u, w2u, *scales).format == Fp8Format("tensor")
    biases = np.empty((E, 2 * INTER), np.float32), np.empty((E, H), BF16)
    x = np.empty((T, H), np.float16)
    assert _validate.check_fp8_weights(w1, w2, *block_scales(w1, w2), *biases, x=x).hidden == H
    layout = WeightLayout(transposed=True)  # scales follow the stored axes: [E, ceil(H/128), ceil(2I/128)]
    w1t, w2t = fp8_weights(layout=layout)
    scales = block_scales(w1t, w2t)
    assert scales[0].shape == (E, 3, 3) and scales[1].shape == (E, 2, 3)
    assert _validate.check_fp8_weights(w1t, w2t, *scales, layout=layout).intermediate == INTER
    w1d, w2d = fp8_weights(e=2, h=7168, i=2048)  # DeepSeek-V3's shapes
    assert _validate.check_fp8_weights(w1d, w2d, *block_scales(w1d, w2d)).format.kind == "block"


W1, W2 = fp8_weights()
S1, S2 = block_scales(W1, W2)


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        (
            (*fp8_weights(dtype=BF16), S1, S2),
            {},
            TypeError,
            r"w1 must be float8_e4m3fn \(or its bits as uint8\) with w1_scale, got bfloat16",
        ),
        (
            (W1, W2.astype(np.int8), S1, S2),
            {},
            TypeError,
            "w2 must be float8_e4m3fn .* with w2_scale, got int8",
        ),
        ((W1, W2, None, S2), {}, ValueError, r"w1_scale is required with fp8 w1 \(w = q \* scale\)"),
        ((W1, W2, S1, None), {}, ValueError, "w2_scale is required with fp8 w2"),
        ((W1, W2, S1.astype(BF16), S2), {}, TypeError, "w1_scale must be float32, got bfloat16"),
        ((W1, W2, S1, S2.astype(np.float64)), {}, TypeError, "w2_scale must be float32, got float64"),
        (
            (W1, W2, np.empty((E, 6, 5), np.float32), S2),
            {},
            ValueError,
            r"w1_scale must be \[E, ceil\(2I/128\), ceil\(H/128\)\] = \(3, 3, 3\) \(one scale per 128 x 128 "
            r"block of w1 \[E, 2I, H\]\) or \[E\] / \[E, 1, 1\] \(one per expert matrix\), got \(3, 6, 5\); "
            r"that shape fits blocks of 64 x 64, and only 128 x 128 is supported",
        ),
        (
            (W1, W2, S1, np.empty((E, 3), np.float32)),
            {},
            ValueError,
            r"w2_scale must be \[E, ceil\(H/128\), ceil\(I/128\)\] = \(3, 3, 2\) .*got \(3, 3\)$",
        ),
        ((W1, W2, S1, np.empty(E + 1, np.float32)), {}, ValueError, r"w2_scale must be .* got \(4,\)$"),
        (
            (W1, W2, S1, np.empty(E, np.float32)),
            {},
            ValueError,
            "w1_scale is per block and w2_scale per tensor: both scales must have the same format",
        ),
        (
            (*fp8_weights(h=328), *block_scales(*fp8_weights(h=328))),
            {},
            ValueError,
            r"w1 has H = 328: fp8 weights need H to be a positive multiple of 16",
        ),
        (
            (*fp8_weights(i=96), *block_scales(*fp8_weights(i=96))),
            {},
            ValueError,
            r"w1 \[E, 2I, H\] has I = 96: fp8 weights need I to be a positive multiple of 64",
        ),
        (
            (W1, W2, S1, S2),
            {"x": np.empty((T, H + 16), BF16)},
            ValueError,
            r"w1 must be \[E, 2I, H\] with H = x.shape\[1\] = 336",
        ),
        ((W1, W2, S1, S2), {"x": np.empty((T, H), np.float32)}, TypeError, "x must be bfloat16 or float16"),
        ((W1, W1, S1, S2), {}, ValueError, r"w2 must have shape \[E, H, I\] \(E and I from w1\)"),
        ((W1[0], W2, S1, S2), {}, ValueError, "w1 must be 3-D"),
        ((W1, W2, S1, S2, np.empty((E, INTER), np.float32)), {}, ValueError, r"b1 must have shape \[E, 2I\]"),
        (
            (W1, W2, S1, S2, None, np.empty((E, H), np.int32)),
            {},
            TypeError,
            "b2 must be float32, bfloat16 or float16, got int32",
        ),
    ],
)
def test_fp8_weight_errors_name_the_argument(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        _validate.check_fp8_weights(*args, **kwargs)


def test_fp8_partial_blocks_are_accepted_and_their_block_size_read():
    """H = 2880 (22.5 blocks): the scale has ceil(2880/128) = 23 columns; 46 x 45 would be 64 x 64 blocks."""
    w1, w2 = fp8_weights(e=2, h=2880, i=1472)
    s1, s2 = block_scales(w1, w2)
    assert s1.shape == (2, 23, 23) and s2.shape == (2, 23, 12)
    assert _validate.check_fp8_weights(w1, w2, s1, s2).hidden == 2880
    with pytest.raises(ValueError, match="fits blocks of 64 x 64"):
        _validate.check_fp8_weights(w1, w2, np.empty((2, 46, 45), np.float32), s2)


# ---- the fp8 layer's reference ------------------------------------------------------------------
def layer(rng, fmt, transposed=False):
    x = rng.standard_normal((T, H)).astype(BF16)
    w1 = (rng.standard_normal((E, 2 * INTER, H)) / np.sqrt(H)).astype(BF16)
    w2 = (rng.standard_normal((E, H, INTER)) / np.sqrt(INTER)).astype(BF16)
    b1 = (rng.standard_normal((E, 2 * INTER)) * 0.1).astype(BF16)
    b2 = (rng.standard_normal((E, H)) * 0.1).astype(BF16)
    ids = np.stack([rng.permutation(E + 1)[:K] for _ in range(T)]).astype(np.int32) - 1  # some -1: dropped
    weights = rng.uniform(0.1, 1.0, (T, K)).astype(np.float32)
    return x, w1, w2, b1, b2, weights, ids


@pytest.mark.parametrize("fmt", ["block", "tensor"])
def test_fp8_reference_against_the_unquantised_layer(rng, fmt):
    """Measured 5.9e-2 to 6.6e-2 (20 seeds, both formats) for Gaussian data: four e4m3 roundings
    (x, w1, h, w2) of ~2.6e-2 each in quadrature, grown by SwiGLU. Bounded loosely."""
    x, w1, w2, b1, b2, weights, ids = layer(rng, fmt)
    (q1, s1), (q2, s2) = fp8.quantize_weights(w1, fmt), fp8.quantize_weights(w2, fmt)
    out = reference.moe_fp8(x, q1, s1, q2, s2, weights, ids, b1, b2)
    error = reference.relative_error(out, reference.moe(x, w1, w2, weights, ids, b1, b2))
    assert 0.02 < error < 0.1, error


def test_fp8_reference_stages_and_layouts(rng):
    """moe_fp8 is moe_fp8_h then moe_fp8_from_h; x is quantised per 128 (block) or per row
    (tensor); transposed weights quantise to the transposed blocks and give the same layer;
    pairs routed elsewhere are skipped."""
    x, w1, w2, b1, b2, weights, ids = layer(rng, "block")
    (q1, s1), (q2, s2) = fp8.quantize_weights(w1), fp8.quantize_weights(w2)
    out = reference.moe_fp8(x, q1, s1, q2, s2, weights, ids, b1, b2)
    x_q, x_s = reference.quantize_groups(x, 128)
    h_q, h_s = reference.moe_fp8_h(x_q, x_s, q1, s1, ids, b1)
    assert h_q.shape == (T * K, INTER) and h_s.shape == (T * K, INTER // 64)
    dropped = ids.reshape(-1) < 0
    assert dropped.any() and np.isnan(h_s[dropped]).all() and np.isfinite(h_s[~dropped]).all()
    np.testing.assert_array_equal(
        reference.moe_fp8_from_h(h_q.view(np.uint8), h_s, q2, s2, weights, ids, b2), out
    )

    (t1, r1), (t2, r2) = (fp8.quantize_weights(np.ascontiguousarray(w.transpose(0, 2, 1))) for w in (w1, w2))
    np.testing.assert_array_equal(t1.view(np.uint8), q1.view(np.uint8).transpose(0, 2, 1))
    np.testing.assert_array_equal(r1, s1.transpose(0, 2, 1))
    transposed = reference.moe_fp8(x, t1, r1, t2, r2, weights, ids, b1, b2, transposed=True)
    np.testing.assert_allclose(transposed, out, rtol=1e-12, atol=1e-12)

    (p1, u1), (p2, u2) = fp8.quantize_weights(w1, "tensor"), fp8.quantize_weights(w2, "tensor")
    x_q, x_s = reference.quantize_groups(x, H)  # per token
    h_q, h_s = reference.moe_fp8_h(x_q, x_s, p1, u1, ids, b1)
    per_tensor = reference.moe_fp8(x, p1, u1, p2, u2, weights, ids, b1, b2)
    np.testing.assert_array_equal(reference.moe_fp8_from_h(h_q, h_s, p2, u2, weights, ids, b2), per_tensor)

    local = reference.moe_fp8(x, q1[1:], s1[1:], q2[1:], s2[1:], weights, ids, b1[1:], b2[1:], first_expert=1)
    skipped = np.where(ids == 0, -1, ids)  # expert 0's pairs, routed elsewhere
    np.testing.assert_array_equal(local, reference.moe_fp8(x, q1, s1, q2, s2, weights, skipped, b1, b2))
