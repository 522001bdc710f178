"""The device-built routing plan and router against the numpy reference (GPU only)."""

import numpy as np
import pytest

import moefuse
from moefuse import reference
from moefuse.plan import PLAN_ARRAYS
from moefuse_bench.problems import random_ids

pytestmark = pytest.mark.gpu


def compare_plan(topk_ids, num_experts, tile_m, first_expert=0, num_local_experts=None, id_dtype=np.int32):
    import cupy

    routing = moefuse.plan(
        cupy.asarray(topk_ids.astype(id_dtype)),
        num_experts,
        first_expert=first_expert,
        num_local_experts=num_local_experts,
        tile_m=tile_m,
    )
    num_local = num_local_experts or num_experts - first_expert
    want = reference.plan(topk_ids, first_expert, num_local, tile_m, routing.capacity, routing.max_tiles)
    for name in PLAN_ARRAYS:
        np.testing.assert_array_equal(getattr(routing, name).get(), want[name], err_msg=name)
    return routing


@pytest.mark.parametrize("tile_m", [64, 128])
@pytest.mark.parametrize(
    "num_tokens, top_k, num_experts, skew",
    [
        (1, 2, 8, 0.0),
        (7, 2, 64, 0.0),
        (1000, 2, 8, 0.0),
        (1000, 2, 8, 0.9),
        (700, 1, 16, 0.0),
        (128, 8, 256, 0.0),
        (16, 8, 256, 0.0),  # T*k = 128: plan_small's largest
        (17, 8, 256, 0.3),  # plan_one_block's smallest
        (64, 8, 256, 0.0),
        (512, 8, 256, 0.0),  # T*k = 4096, 256 experts: plan_one_block's largest
        (513, 8, 256, 0.3),  # the multi-kernel plan's smallest by entries
        (100, 4, 300, 0.0),  # and by experts
        (4096, 8, 256, 0.0),
        (5000, 6, 64, 0.5),
    ],
)
def test_plan_matches_reference(rng, num_tokens, top_k, num_experts, skew, tile_m):
    ids = random_ids(rng, num_tokens, top_k, num_experts, skew)
    routing = compare_plan(ids, num_experts, tile_m)
    assert int(routing.expert_counts.sum()) == num_tokens * top_k


def test_plan_with_empty_experts_dropped_ids_and_int64(rng):
    ids = random_ids(rng, 300, 4, 32)
    ids[ids >= 20] = 3  # experts 20..31 stay empty; duplicates within a token are allowed
    ids[rng.random(ids.shape) < 0.2] = -1
    compare_plan(ids, 32, 64, id_dtype=np.int64)
    compare_plan(ids, 32, 128)


def test_plan_expert_parallel_local_range(rng):
    ids = random_ids(rng, 513, 3, 16)
    ids[rng.random(ids.shape) < 0.1] = -1
    routing = compare_plan(ids, 16, 64, first_expert=5, num_local_experts=6)
    local = (ids >= 5) & (ids < 11)
    assert int(routing.expert_counts.sum()) == int(local.sum())
    assert (routing.expanded_to_permuted.get()[~local.reshape(-1)] == -1).all()


@pytest.mark.parametrize("logit_dtype", ["float32", "bfloat16", "float16", "float64"])
@pytest.mark.parametrize("num_tokens, num_experts, k", [(1, 8, 2), (333, 64, 6), (100, 256, 8), (50, 40, 40)])
def test_route_matches_reference(rng, num_tokens, num_experts, k, logit_dtype):
    """fp32, bf16 and fp16 logits are read as they are (16-bit ones tie often: the reference
    breaks ties to the lower id, as the kernel does); other float types are converted to fp32."""
    import cupy
    import ml_dtypes

    dtype = ml_dtypes.bfloat16 if logit_dtype == "bfloat16" else np.dtype(logit_dtype)
    logits = (rng.standard_normal((num_tokens, num_experts)) * 3).astype(dtype)
    seen = logits.astype(np.float32)  # the values the kernel works on
    for renormalize in (True, False):
        weights, ids = moefuse.route(cupy.asarray(logits), k, renormalize=renormalize)
        want_weights, want_ids = reference.route(seen, k, renormalize)
        np.testing.assert_array_equal(ids.get(), want_ids)
        np.testing.assert_allclose(weights.get(), want_weights, rtol=1e-4, atol=1e-6)


def test_empty_batch():
    import cupy

    routing = moefuse.plan(cupy.empty((0, 2), dtype=cupy.int32), 8)
    assert routing.capacity == 0 and int(routing.expert_counts.sum()) == 0
    weights, ids = moefuse.route(cupy.empty((0, 8), dtype=cupy.float32), 2)
    assert weights.shape == ids.shape == (0, 2)
