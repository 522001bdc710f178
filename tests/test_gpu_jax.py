"""JAX arrays in, JAX arrays back, over the same GPU memory (GPU and JAX only)."""

import os

import numpy as np
import pytest

import moefuse
from moefuse import reference
from moefuse._interop import like_input
from moefuse_bench.problems import TOLERANCE, moe_problem

# JAX takes 75% of the GPU's memory when it starts its GPU backend (at its first use, not at
# import) unless told not to: the other tests of this process need that memory.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
jax = pytest.importorskip("jax")
pytestmark = pytest.mark.gpu

HIDDEN, INTER, EXPERTS, TOP_K = 264, 200, 8, 2


@pytest.fixture(scope="module")
def gpu():
    """JAX's first GPU; a CPU-only jaxlib has none."""
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        pytest.skip("JAX has no GPU backend here (a CPU-only jaxlib)")


def bits(a) -> np.ndarray:
    """A bf16/fp32/int32 array's bits on the host (NaN-safe exact comparison)."""
    host = np.asarray(a)
    return host.view(np.uint16 if host.itemsize == 2 else np.uint32)


def on_jax(gpu, p) -> dict:
    """The problem's arrays as JAX arrays on `gpu` (bf16 x and weights, fp32 weights, int32 ids)."""
    return {k: None if v is None else jax.device_put(v, gpu) for k, v in p.__dict__.items()}


def is_jax_on(array, gpu) -> bool:
    return isinstance(array, jax.Array) and array.devices() == {gpu}


def test_fused_moe_and_route_take_and_return_jax_arrays(rng, gpu):
    p = moe_problem(rng, "bf16", 100, HIDDEN, INTER, EXPERTS, TOP_K, bias=True)
    j, d = on_jax(gpu, p), p.device()
    out = moefuse.fused_moe(
        j["x"], j["w1"], j["w2"], j["topk_weights"], j["topk_ids"], b1=j["b1"], b2=j["b2"]
    )
    assert is_jax_on(out, gpu) and out.dtype == j["x"].dtype and out.shape == (100, HIDDEN)
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    assert reference.relative_error(np.asarray(out), want) < TOLERANCE["bf16"]
    same = moefuse.fused_moe(
        d["x"], d["w1"], d["w2"], d["topk_weights"], d["topk_ids"], b1=d["b1"], b2=d["b2"]
    )
    np.testing.assert_array_equal(bits(out), bits(same.get()))  # k = 2: the fused path is deterministic

    logits = rng.standard_normal((100, EXPERTS)).astype(np.float32)
    weights, ids = moefuse.route(jax.device_put(logits, gpu), TOP_K)
    assert is_jax_on(weights, gpu) and is_jax_on(ids, gpu)
    assert weights.dtype == np.float32 and ids.dtype == np.int32 and ids.shape == (100, TOP_K)
    import cupy

    cupy_weights, cupy_ids = moefuse.route(cupy.asarray(logits), TOP_K)
    np.testing.assert_array_equal(bits(weights), bits(cupy_weights.get()))
    np.testing.assert_array_equal(np.asarray(ids), cupy_ids.get())


def test_layer_and_grouped_gemm_return_jax_arrays(rng, gpu):
    import cupy

    p = moe_problem(rng, "bf16", 64, HIDDEN, INTER, EXPERTS, TOP_K, bias=False)
    j = on_jax(gpu, p)
    layer = moefuse.MoELayer(j["w1"], j["w2"])
    out = layer(j["x"], j["topk_weights"], j["topk_ids"])
    assert is_jax_on(out, gpu)
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)
    assert reference.relative_error(np.asarray(out), want) < TOLERANCE["bf16"]

    routing = moefuse.plan(cupy.asarray(p.topk_ids), EXPERTS)
    a = rng.standard_normal((routing.capacity, INTER)).astype(p.x.dtype)
    rows_out = moefuse.grouped_gemm(jax.device_put(a, gpu), j["w2"], routing)
    assert is_jax_on(rows_out, gpu)
    same = moefuse.grouped_gemm(cupy.asarray(a), cupy.asarray(p.w2), routing)
    rows = routing.expanded_to_permuted.get().ravel()  # the routed rows (padding rows are left as they were)
    np.testing.assert_array_equal(bits(np.asarray(rows_out)[rows]), bits(same.get()[rows]))


def test_results_share_the_cupy_memory(rng, gpu):
    """No copy: the JAX result's buffer is the CuPy array the kernels wrote."""
    import cupy

    p = moe_problem(rng, "bf16", 32, HIDDEN, INTER, EXPERTS, TOP_K, bias=False)
    j = on_jax(gpu, p)
    out = cupy.full((32, HIDDEN), np.nan, dtype=p.x.dtype)  # poisoned: every row must be written
    result = moefuse.fused_moe(j["x"], j["w1"], j["w2"], j["topk_weights"], j["topk_ids"], out=out)
    assert result.unsafe_buffer_pointer() == out.data.ptr
    np.testing.assert_array_equal(bits(result), bits(out.get()))

    rows = cupy.arange(12, dtype=np.float32).reshape(3, 4)
    view = like_input(rows, j["x"])
    assert is_jax_on(view, gpu) and view.unsafe_buffer_pointer() == rows.data.ptr
    np.testing.assert_array_equal(np.asarray(view), rows.get())
    assert like_input(rows, rows) is rows  # a CuPy caller gets CuPy arrays


def test_stream_order_both_ways_without_a_host_sync(rng, gpu):
    """JAX computes the inputs and reads the output at once, with nothing waited for on the host:
    each side waits for the other on the GPU (DLPack's stream handshake). About 3 ms of GEMMs on an
    H100, so a missing wait would show; the bits must match the same call on settled copies."""
    import cupy

    jnp = jax.numpy
    T, H, I, E = 8192, 4096, 4096, 8  # noqa: E741 - the usual name of the intermediate size
    keys = jax.random.split(jax.random.key(int(rng.integers(2**31))), 4)
    with jax.default_device(gpu):
        x = jax.random.normal(keys[0], (T, H), jnp.bfloat16)
        w1 = (jax.random.normal(keys[1], (E, 2 * I, H)) * H**-0.5).astype(jnp.bfloat16)
        w2 = (jax.random.normal(keys[2], (E, H, I)) * I**-0.5).astype(jnp.bfloat16)
        logits = jax.random.normal(keys[3], (T, E))
    weights, ids = moefuse.route(logits, TOP_K)
    out = moefuse.fused_moe(x, w1, w2, weights, ids)
    doubled = out + out  # exact in bf16: 2 * out
    assert is_jax_on(doubled, gpu)

    jax.block_until_ready((x, w1, w2, logits))
    settled = [cupy.from_dlpack(a).copy() for a in (x, w1, w2, logits)]
    cupy.cuda.Device().synchronize()
    cupy_weights, cupy_ids = moefuse.route(settled[3], TOP_K)
    want = moefuse.fused_moe(*settled[:3], cupy_weights, cupy_ids)
    np.testing.assert_array_equal(np.asarray(ids), cupy_ids.get())
    np.testing.assert_array_equal(bits(weights), bits(cupy_weights.get()))
    np.testing.assert_array_equal(np.asarray(doubled).astype(np.float32), 2 * want.get().astype(np.float32))
