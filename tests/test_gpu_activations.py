"""Every activation on every weight layout, on each backend and kernel family, against the float64
reference (GPU only). Weights are made in the standard layout, then stored the way each layout
says, so one reference checks all of them."""

import numpy as np
import pytest

import moefuse
from moefuse import reference
from moefuse_bench.problems import DTYPES, LAYOUTS, TOLERANCE, random_ids, stored_as

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("backend")]

# Not multiples of any tile: every edge is hit; I = 200 leaves MN-major boxes half out of bounds.
HIDDEN, INTER, EXPERTS, TOP_K = 264, 200, 8, 2
ACTIVATIONS = {
    "swiglu": moefuse.Activation("swiglu"),
    "swiglu_clamped": moefuse.Activation("swiglu", limit=1.0),  # clamps ~30% of N(0, 1) values
    "gpt_oss": moefuse.Activation("gpt_oss"),
    "gpt_oss_clamped": moefuse.Activation("gpt_oss", alpha=1.5, limit=0.8),
    "gelu_tanh": moefuse.Activation("gelu_tanh"),
    "relu2": moefuse.Activation("relu2"),
}


def problem(rng, dtype, num_tokens, gated, bias):
    dt = DTYPES[dtype]
    w1_rows = 2 * INTER if gated else INTER
    weights = rng.random((num_tokens, TOP_K)).astype(np.float32) + 0.1
    return dict(
        x=rng.standard_normal((num_tokens, HIDDEN)).astype(dt),
        w1=(rng.standard_normal((EXPERTS, w1_rows, HIDDEN)) * HIDDEN**-0.5).astype(dt),
        w2=(rng.standard_normal((EXPERTS, HIDDEN, INTER)) * INTER**-0.5).astype(dt),
        b1=(rng.standard_normal((EXPERTS, w1_rows)) * 0.1).astype(dt) if bias else None,
        b2=(rng.standard_normal((EXPERTS, HIDDEN)) * 0.1).astype(dt) if bias else None,
        topk_weights=weights / weights.sum(axis=1, keepdims=True),
        topk_ids=random_ids(rng, num_tokens, TOP_K, EXPERTS),
    )


def run_layer(p, activation, layout, fused=True):
    """(out, reference) for problem `p` with its weights stored in `layout`."""
    import cupy

    w1, w2, b1 = stored_as(p["w1"], p["w2"], p["b1"], **layout)
    device = {k: None if v is None else cupy.asarray(v) for k, v in dict(p, w1=w1, w2=w2, b1=b1).items()}
    layer = moefuse.MoELayer(
        device["w1"], device["w2"], device["b1"], device["b2"], activation=activation, **layout
    )
    num_tokens = p["x"].shape[0]
    out = cupy.full((num_tokens, HIDDEN), np.nan, dtype=p["x"].dtype)
    layer(device["x"], device["topk_weights"], device["topk_ids"], out=out, fused_finalize=fused)
    want = reference.moe(
        p["x"], w1, w2, p["topk_weights"], p["topk_ids"], b1, p["b2"], activation=activation, **layout
    )
    return out.get(), want


@pytest.mark.parametrize("num_tokens", [1, 46, 701])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_on_layout(rng, activation, layout, num_tokens):
    act = ACTIVATIONS[activation]
    if not act.gated and LAYOUTS[layout]["interleaved"]:
        pytest.skip("relu2 has no gate to interleave")
    p = problem(rng, "bf16", num_tokens, act.gated, bias=num_tokens % 2 == 1)
    out, want = run_layer(p, act, LAYOUTS[layout])
    assert reference.relative_error(out, want) < TOLERANCE["bf16"]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("activation", ["gpt_oss_clamped", "relu2"])
def test_fp16_transposed_both_finalize_paths(rng, activation, fused):
    act = ACTIVATIONS[activation]
    layout = dict(transposed=True, interleaved=act.gated)
    p = problem(rng, "fp16", 333, act.gated, bias=True)
    out, want = run_layer(p, act, layout, fused=fused)
    assert reference.relative_error(out, want) < TOLERANCE["fp16"]


def test_transposed_weights_are_read_in_place_on_hopper(rng, backend):
    """gpt-oss's layout on Hopper: a forward allocates nothing of weight size (its workspace and
    output are small); the portable kernels copy transposed weights once, by design."""
    import cupy

    if not backend.startswith("sm90"):
        pytest.skip("the portable kernels read a copy of transposed weights")
    big_inter, hidden, experts, num_tokens = 1024, 1024, 16, 64
    dt = DTYPES["bf16"]
    w1 = cupy.asarray((rng.standard_normal((experts, hidden, 2 * big_inter)) * 0.03).astype(dt))
    w2 = cupy.asarray((rng.standard_normal((experts, big_inter, hidden)) * 0.03).astype(dt))
    x = cupy.asarray(rng.standard_normal((num_tokens, hidden)).astype(dt))
    ids = cupy.asarray(random_ids(rng, num_tokens, TOP_K, experts))
    weights = cupy.full((num_tokens, TOP_K), 0.5, dtype=np.float32)
    layer = moefuse.MoELayer(w1, w2, activation="gpt_oss", transposed=True, interleaved=True)
    layer(x, weights, ids)  # compiles and sizes the workspace
    cupy.cuda.get_current_stream().synchronize()
    pool = cupy.get_default_memory_pool()
    before = pool.total_bytes()
    out = layer(x, weights, ids)
    cupy.cuda.get_current_stream().synchronize()
    grown = pool.total_bytes() - before
    assert grown <= out.nbytes + (1 << 20) < min(w1.nbytes, w2.nbytes), grown
    (read,) = layer._read_weights.values()
    assert read[0] is layer.w1 and read[1] is layer.w2  # no copy


def test_portable_kernels_copy_transposed_weights_once_and_not_under_capture(rng, backend):
    """The sm80 kernels read a copy of transposed weights, made on the layer's first call (and
    kept); a first call under graph capture refuses to make it, naming the fix."""
    import cupy

    if backend != "sm80":
        pytest.skip("the copy is the portable kernels'")
    p = problem(rng, "bf16", 64, gated=True, bias=False)
    w1, w2, _ = stored_as(p["w1"], p["w2"], transposed=True, interleaved=False)
    inputs = [cupy.asarray(p[k]) for k in ("x", "topk_weights", "topk_ids")]
    layer = moefuse.MoELayer(cupy.asarray(w1), cupy.asarray(w2), transposed=True)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            with pytest.raises(ValueError, match=r"w1 is transposed.*Run one call before capturing"):
                layer(*inputs)
        finally:
            stream.end_capture()
    layer(*inputs)
    copies = layer._read_weights["sm80"]
    assert copies[0] is not layer.w1 and copies[0].shape == p["w1"].shape
    layer(*inputs)
    assert layer._read_weights["sm80"] is copies
