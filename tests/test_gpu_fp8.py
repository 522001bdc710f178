"""The fp8 layer on Hopper (docs/DESIGN.md D30, issue 16): both scale formats, fused and stored
GEMM2, bf16 and f32 outputs, against the float64 reference from the same quantised operands
(`reference.moe_fp8`). GPU only (sm_90); written before any fp8 kernel ran on a GPU."""

import ml_dtypes
import numpy as np
import pytest

import moefuse
from moefuse import fp8, reference

pytestmark = pytest.mark.gpu

BOUND = 5e-3  # relative error against reference.moe_fp8 (float64 from the same quantised operands)
# (E, k, H, I): small Mixtral-, DeepSeek- and Qwen3-like layers; DeepSeek's H % 128 != 0 (a partial
# last scale block of x and of w1's K / w2's rows), Qwen3's I % 128 != 0 (I % 64 == 0).
SHAPES = {
    "mixtral": (8, 2, 512, 384),
    "deepseek": (16, 8, 576, 256),
    "qwen3": (32, 8, 256, 192),
}


@pytest.fixture
def hopper():
    from moefuse import _device

    if _device.compute_capability(_device.require_gpu()) != (9, 0):
        pytest.skip("the fp8 kernels run on Hopper (sm_90a) only for now")


def _relative(got, want) -> float:
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("fmt", ["block", "tensor"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("out_dtype", [ml_dtypes.bfloat16, np.float32])
@pytest.mark.parametrize("num_tokens", [1, 37, 300])
def test_fp8_layer_matches_the_quantised_reference(hopper, rng, shape, fmt, fused, out_dtype, num_tokens):
    import cupy

    experts, top_k, hidden, inter = SHAPES[shape]
    x = (rng.standard_normal((num_tokens, hidden))).astype(ml_dtypes.bfloat16)
    w1 = (rng.standard_normal((experts, 2 * inter, hidden)) / np.sqrt(hidden)).astype(ml_dtypes.bfloat16)
    w2 = (rng.standard_normal((experts, hidden, inter)) / np.sqrt(inter)).astype(ml_dtypes.bfloat16)
    b1 = (0.1 * rng.standard_normal((experts, 2 * inter))).astype(np.float32)
    b2 = (0.1 * rng.standard_normal((experts, hidden))).astype(np.float32)
    logits = rng.standard_normal((num_tokens, experts))
    ids = np.argsort(-logits, axis=1)[:, :top_k].astype(np.int32)
    weights = rng.uniform(0.1, 1.0, (num_tokens, top_k)).astype(np.float32)
    w1_q, w1_s = fp8.quantize_weights(w1, fmt)
    w2_q, w2_s = fp8.quantize_weights(w2, fmt)
    dev = cupy.asarray
    layer = moefuse.MoELayer(
        dev(w1_q.view(np.uint8)),
        dev(w2_q.view(np.uint8)),
        dev(b1),
        dev(b2),
        w1_scale=dev(w1_s),
        w2_scale=dev(w2_s),
    )
    out = cupy.full((num_tokens, hidden), np.nan, dtype=out_dtype)  # poisoned: every row must be written
    layer(dev(x), dev(weights), dev(ids), out=out, fused_finalize=fused)
    got = cupy.asnumpy(out).astype(np.float64)
    assert np.isfinite(got).all()
    want = reference.moe_fp8(x, w1_q, w1_s, w2_q, w2_s, weights, ids, b1, b2)
    error = _relative(got, want)
    unquantised = _relative(got, reference.moe(x, w1, w2, weights, ids, b1, b2))
    print(
        f"{shape} {fmt} fused={fused} out={np.dtype(out_dtype)} T={num_tokens}: {error:.2e} vs the "
        f"quantised reference, {unquantised:.2e} vs the unquantised bf16 layer (reported, not bounded)"
    )
    assert error <= BOUND
