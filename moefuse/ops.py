"""The public numpy-like functions. All run on CuPy's current stream and never wait for the GPU."""

from __future__ import annotations

import numpy as np

from . import _validate, backends, kernels
from ._arrays import (
    ACTIVATION_DTYPES,
    FLOAT32,
    as_device_array,
    contiguous,
    optional_device_array,
    require_aligned,
)
from ._device import require_gpu
from .plan import RoutingPlan, launch_plan, plan_from_arrays, plan_specs
from .workspace import Workspace


def route(router_logits, k: int, renormalize: bool = True):
    """Softmax over experts, then the top `k` per token (ties to the lower id).

    Returns `(topk_weights float32 [T, k], topk_ids int32 [T, k])`, weights in descending order,
    renormalised to sum to 1 per token when `renormalize`."""
    import cupy

    logits = as_device_array(router_logits, "router_logits")
    num_tokens, _ = _validate.check_router_logits(logits, k)
    logits = contiguous(logits.astype(FLOAT32, copy=False))
    topk_weights = cupy.empty((num_tokens, k), dtype=FLOAT32)
    topk_ids = cupy.empty((num_tokens, k), dtype=np.int32)
    if num_tokens:
        kernels.topk_softmax(logits, k, renormalize, topk_weights, topk_ids)
    return topk_weights, topk_ids


def plan(
    topk_ids,
    num_experts: int,
    *,
    first_expert: int = 0,
    num_local_experts: int | None = None,
    tile_m: int | None = None,
) -> RoutingPlan:
    """The routing plan for `topk_ids [T, k]` over local experts
    `[first_expert, first_expert + num_local_experts)`; other ids (and ids < 0) are skipped.
    `tile_m` (64 or 128; every backend has both) defaults to what the device's GEMM backend wants
    for bf16 (see `moefuse.heuristics`)."""
    ids = contiguous(as_device_array(topk_ids, "topk_ids"))
    num_tokens, top_k = _validate.check_topk_ids(ids)
    _validate.check_top_k(top_k, num_experts, name="k (topk_ids.shape[1])")
    num_local = _validate.check_expert_range(num_experts, first_expert, num_local_experts)
    backend = backends.for_device(require_gpu())
    _validate.check_tile_m(tile_m, backend.tile_ms())
    if tile_m is None:
        tile_m = backend.tile_m(num_tokens, top_k, num_local)
    _validate.check_plan_fits(num_tokens, top_k, num_local, tile_m)
    arrays = Workspace().carve(plan_specs(num_tokens, top_k, num_local, tile_m))
    routing = plan_from_arrays(num_tokens, top_k, num_experts, first_expert, num_local, tile_m, arrays)
    launch_plan(ids, routing, arrays)
    return routing


def grouped_gemm(a, w, routing: RoutingPlan, *, bias=None, out=None):
    """`out[p] = a[p] @ w[e].T + bias[e]` for every routed permuted row `p` of expert `e`.

    `a` is `[routing.capacity, K]` in the plan's permuted row order (padding rows are ignored),
    `w` is `[E_local, N, K]`, `bias` `[E_local, N]`. Returns `out [capacity, N]`; its padding rows
    are left as they were."""
    import cupy

    a = contiguous(as_device_array(a, "a"))
    w = contiguous(as_device_array(w, "w"))
    bias = optional_device_array(bias, "bias")
    if a.ndim != 2 or a.shape[0] != routing.capacity:
        raise ValueError(f"a must be [routing.capacity={routing.capacity}, K], got {tuple(a.shape)}")
    if w.ndim != 3 or w.shape[0] != routing.num_local_experts or w.shape[2] != a.shape[1]:
        raise ValueError(
            f"w must be [E_local={routing.num_local_experts}, N, K={a.shape[1]}], got {tuple(w.shape)}"
        )
    num_n, depth = w.shape[1], w.shape[2]
    for size, what in ((num_n, "N (w.shape[1])"), (depth, "K (a.shape[1])")):
        if size == 0 or size % _validate.ROW_ALIGNMENT:
            raise ValueError(f"{what} must be a positive multiple of {_validate.ROW_ALIGNMENT}, got {size}")
    if a.dtype != w.dtype or a.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"a and w must both be bfloat16 or both float16, got {a.dtype} and {w.dtype}")
    if bias is not None:
        if bias.dtype != w.dtype or bias.shape != (routing.num_local_experts, num_n):
            raise ValueError(f"bias must be {w.dtype} [E_local, N], got {bias.dtype} {tuple(bias.shape)}")
        bias = contiguous(bias)
    if out is None:
        out = cupy.empty((routing.capacity, num_n), dtype=a.dtype)
    else:
        out = as_device_array(out, "out")
        _validate.check_out(out, (routing.capacity, num_n), np.dtype(a.dtype))
        require_aligned(out, "out")
    if routing.max_tiles:
        backend = backends.for_device(require_gpu())
        elem = kernels.dtype_tag(a.dtype)
        kind = backends.CallKind(
            routing.num_tokens, routing.top_k, routing.num_local_experts, num_n, depth, elem, elem, False
        )
        config = backend.configure(kind, tile_m=routing.tile_m)
        backends.run(config.gemm2, backends.GemmArrays(a, w, bias, routing, out))
    return out


def fused_moe(
    x,
    w1,
    w2,
    topk_weights,
    topk_ids,
    *,
    b1=None,
    b2=None,
    activation: str = "swiglu",
    fused_finalize: bool = True,
    out=None,
    out_dtype=None,
    first_expert: int = 0,
    num_experts: int | None = None,
):
    """One MoE expert layer: `out[t] = sum_j w[t, j] * (act(x[t] @ w1[e].T + b1[e]) @ w2[e].T + b2[e])`.

    See `MoELayer` for the arguments; this builds a layer for one call (no weight copies unless an
    input is not C-contiguous). Repeated calls with the same weights should hold a `MoELayer`."""
    from .layer import MoELayer

    layer = MoELayer(
        w1, w2, b1, b2, activation=activation, first_expert=first_expert, num_experts=num_experts
    )
    return layer(x, topk_weights, topk_ids, out=out, out_dtype=out_dtype, fused_finalize=fused_finalize)
