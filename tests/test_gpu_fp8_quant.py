"""The fp8 activation quantiser (cuda_src/quant.cu) bit for bit against
moefuse.reference.quantize_groups, and the CuPy paths of moefuse.fp8 against its numpy ones (GPU
only)."""

import ml_dtypes
import numpy as np
import pytest

from moefuse import fp8, kernels, reference

pytestmark = pytest.mark.gpu

DTYPES = {"bf16": ml_dtypes.bfloat16, "f16": np.float16}


@pytest.fixture
def quant_gpu():
    """The quant module's kernels exist for this GPU's architecture (sm_90a, sm_100a)."""
    from moefuse import _device, _sources

    arch = _device.device_arch(_device.require_gpu())
    if arch not in _sources.MODULE_ARCHS["quant"]:
        pytest.skip(f"the fp8 quantiser is built for {_sources.MODULE_ARCHS['quant']}, not {arch}")


def activations(rng, num_tokens: int, hidden: int, dtype) -> np.ndarray:
    """Rows of fresh normal values at magnitudes from 1e-3 to 1e4, with a zero row, a row at 1e4,
    and a row whose tiny negative values round to -0 beside a 1.0."""
    x = rng.standard_normal((num_tokens, hidden)) * 10.0 ** rng.uniform(-3, 4, (num_tokens, 1))
    x[0] = 0.0
    x[1] = rng.standard_normal(hidden) * 1e4
    x[2] = -1e-6 * rng.uniform(0.5, 1.0, hidden)
    x[2, ::128] = 1.0
    return x.astype(dtype)


def run_kernel(x, group: str):
    """(x_q bits, x_s) from the kernel, outputs poisoned (NaN bytes and scales) first."""
    import cupy

    num_tokens, hidden = x.shape
    scales = 1 if group == "row" else -(-hidden // fp8.BLOCK)
    x_q = cupy.full((num_tokens, hidden), 0x7F, dtype=np.uint8)
    x_s = cupy.full((num_tokens, scales), np.nan, dtype=np.float32)
    kernels.quantize_rows(cupy.asarray(x), group, x_q, x_s)
    return x_q.get(), x_s.get()


@pytest.mark.parametrize("group", ["128", "row"])
@pytest.mark.parametrize("hidden", [7168, 2880])  # 2880 = 22.5 groups of 128: a partial last group
@pytest.mark.parametrize("tag", ["bf16", "f16"])
def test_quantize_rows_matches_the_reference_bit_for_bit(quant_gpu, rng, tag, hidden, group):
    x = activations(rng, 37, hidden, DTYPES[tag])
    q, s = run_kernel(x, group)
    want_q, want_s = reference.quantize_groups(x, hidden if group == "row" else fp8.BLOCK)
    np.testing.assert_array_equal(q, want_q.view(np.uint8))
    np.testing.assert_array_equal(s.view(np.uint32), want_s.view(np.uint32))
    assert np.all(s[0] == np.float32(1e-4) / np.float32(448)) and not q[0].any()  # the zero row


@pytest.mark.parametrize("group", ["128", "row"])
def test_quantize_rows_non_finite_values_stay_in_their_group(quant_gpu, rng, group):
    """A NaN stays in its element; an inf turns its group's scale to inf and its own byte to NaN."""
    x = activations(rng, 5, 1024, np.float32)
    x[3, 5], x[4, 300] = np.nan, -np.inf
    x = x.astype(ml_dtypes.bfloat16)
    q, s = run_kernel(x, group)
    want_q, want_s = reference.quantize_groups(x, 1024 if group == "row" else fp8.BLOCK)
    nan = np.isnan(want_q.astype(np.float32))
    np.testing.assert_array_equal(np.isnan(q.view(fp8.E4M3).astype(np.float32)), nan)
    np.testing.assert_array_equal(q[~nan], want_q.view(np.uint8)[~nan])
    np.testing.assert_array_equal(s, want_s)  # inf where the inf is, equal elsewhere
    assert np.isinf(s[4]).any() and np.isfinite(s[3]).all()


def test_quantize_rows_of_no_tokens_launches_nothing(quant_gpu):
    import cupy

    x = cupy.empty((0, 256), ml_dtypes.bfloat16)
    kernels.quantize_rows(x, "128", cupy.empty((0, 256), np.uint8), cupy.empty((0, 2), np.float32))


@pytest.mark.parametrize("fmt", ["block", "tensor"])
def test_weight_helpers_on_cupy_match_numpy(rng, fmt):
    """quantize_weights and dequantize_weights compute the same bits on the GPU (any GPU)."""
    import cupy

    w = (rng.standard_normal((3, 200, 328)) * 10.0 ** rng.uniform(-3, 1, (3, 1, 1))).astype(
        ml_dtypes.bfloat16
    )
    q, scale = fp8.quantize_weights(w, fmt)
    q_gpu, scale_gpu = fp8.quantize_weights(cupy.asarray(w), fmt)
    assert q_gpu.dtype == np.uint8 and scale_gpu.dtype == np.float32
    np.testing.assert_array_equal(q_gpu.get(), q.view(np.uint8))
    np.testing.assert_array_equal(scale_gpu.get(), scale)
    for dtype in (np.float32, ml_dtypes.bfloat16):
        want = fp8.dequantize_weights(q, scale, dtype)
        np.testing.assert_array_equal(fp8.dequantize_weights(q_gpu, scale_gpu, dtype).get(), want)


def test_cupy_float8_views_are_taken_as_their_bits():
    import cupy

    bits = cupy.arange(256, dtype=np.uint8).reshape(16, 16)
    taken = fp8.as_e4m3_device_array(bits.view(fp8.E4M3), "w1")
    assert taken.dtype == np.uint8 and taken.data.ptr == bits.data.ptr
    assert fp8.as_e4m3_device_array(bits, "w1") is bits
