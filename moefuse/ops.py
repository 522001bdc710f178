"""The public numpy-like functions. All run on CuPy's current stream and never wait for the GPU."""

from __future__ import annotations

import numpy as np

from . import _capture, _debug, _validate, backends, kernels
from ._aliasing import check_device, check_disjoint
from ._arrays import (
    ACTIVATION_DTYPES,
    FLOAT32,
    LOGIT_DTYPES,
    as_device_array,
    contiguous,
    optional_device_array,
    require_aligned,
)
from ._device import require_gpu
from ._interop import like_input
from ._validate import WeightLayout
from .activation import Activation
from .layer import MoELayer, expert_weights
from .layer import workspace_bytes as layer_workspace_bytes
from .plan import PLAN_ARRAYS, RoutingPlan, launch_plan, plan_from_arrays, plan_specs
from .workspace import Workspace


def route(
    router_logits,
    k: int,
    renormalize: bool = True,
    *,
    method: str = "softmax",
    correction_bias=None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling_factor: float = 1.0,
):
    """The top `k` experts of each token and their weights, as a model's router picks them:

    - "softmax" (Mixtral, Qwen3-MoE): softmax over the E logits, then the k largest.
    - "topk_softmax" (gpt-oss): the k largest logits, then a softmax over those k (their weights
      sum to 1 already, so `renormalize` changes nothing).
    - "sigmoid" (DeepSeek-V3): scores sigmoid(logits); the experts are chosen by score +
      `correction_bias` [E] (selection only) among the `topk_group` of `n_group` groups whose two
      largest biased scores sum highest; the weights are the unbiased scores.

    `renormalize` (norm_topk_prob) divides the weights by their sum ("sigmoid": the sum + 1e-20),
    then every weight is multiplied by `scaling_factor` (routed_scaling_factor).

    Returns `(topk_weights float32 [T, k], topk_ids int32 [T, k])`: the bits transformers' router
    computes on CUDA, in its order (docs/DESIGN.md D26): the softmax methods in descending order,
    "sigmoid" the experts above the k-th by ascending id, then the k-th. Ties go to the lower id.
    Logits are read as they are when fp32, bf16 or fp16, correction_bias when fp32 (other float
    types are converted first). All on the GPU, no host sync."""
    import cupy

    _validate.check_route_method(method)
    logits = as_device_array(router_logits, "router_logits")
    num_tokens, num_experts = _validate.check_router_logits(logits, k)
    bias = optional_device_array(correction_bias, "correction_bias")
    device_id, capturing = require_gpu(), _capture.capturing()
    check_device(device_id, (("router_logits", logits), ("correction_bias", bias)))
    read_as = np.dtype(logits.dtype) if np.dtype(logits.dtype) in LOGIT_DTYPES else FLOAT32
    spec = kernels.router(method, read_as)
    _validate.check_router(
        num_experts, k, method, bias, n_group, topk_group, scaling_factor, spec["max_groups"]
    )
    logits = _router_input(logits, read_as, "router_logits", capturing, "Pass fp32, bf16 or fp16 logits")
    if bias is not None:
        bias = _router_input(bias, FLOAT32, "correction_bias", capturing, "Pass a float32 correction_bias")
    topk_weights = cupy.empty((num_tokens, k), dtype=FLOAT32)
    topk_ids = cupy.empty((num_tokens, k), dtype=np.int32)
    if num_tokens:
        kernels.route(
            spec,
            logits,
            k,
            topk_weights,
            topk_ids,
            renormalize=renormalize,
            correction_bias=bias,
            n_group=n_group,
            topk_group=topk_group,
            scaling_factor=scaling_factor,
        )
    return like_input((topk_weights, topk_ids), router_logits, correction_bias)  # JAX in, JAX out


def _router_input(array, dtype, name: str, capturing: bool, fix: str):
    """`array` as the router kernel reads it: `dtype`, C-contiguous (a copy, refused under
    capture, where needed)."""
    if np.dtype(array.dtype) != dtype:
        if capturing:
            _capture.refuse_copy(name, f"is {array.dtype}", fix)
        array = array.astype(dtype)
    return contiguous(array, name, capturing)


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
    for bf16 (see `moefuse.heuristics`). The plan's arrays, and the scratch its kernels use, share
    one allocation that the plan holds."""
    ids = as_device_array(topk_ids, "topk_ids")
    num_tokens, top_k = _validate.check_topk_ids(ids)
    _validate.check_top_k(top_k, num_experts, name="k (topk_ids.shape[1])")
    num_local = _validate.check_expert_range(num_experts, first_expert, num_local_experts)
    device_id, capturing = require_gpu(), _capture.capturing()
    check_device(device_id, (("topk_ids", ids),))
    ids = contiguous(ids, "topk_ids", capturing)
    if _debug.enabled():
        _debug.check_ids(ids, num_experts, capturing)
    backend = backends.for_device(device_id)
    _validate.check_tile_m(tile_m, backend.tile_ms())
    if tile_m is None:
        tile_m = backend.tile_m(num_tokens, top_k, num_local)
    _validate.check_plan_fits(num_tokens, top_k, num_local, tile_m)
    arrays = Workspace().carve(plan_specs(num_tokens, top_k, num_local, tile_m))
    routing = plan_from_arrays(num_tokens, top_k, num_experts, first_expert, num_local, tile_m, arrays)
    launch_plan(ids, routing, arrays)
    return routing


def _plan_arrays(routing: RoutingPlan) -> tuple[tuple[str, object], ...]:
    return tuple((f"routing.{name}", getattr(routing, name)) for name in PLAN_ARRAYS)


def grouped_gemm(a, w, routing: RoutingPlan, *, bias=None, out=None):
    """`out[p] = a[p] @ w[e].T + bias[e]` for every routed permuted row `p` of expert `e`.

    `a` is `[routing.capacity, K]` in the plan's permuted row order (padding rows are ignored),
    `w` is `[E_local, N, K]`, `bias` `[E_local, N]`. Returns `out [capacity, N]`; its padding rows
    are left as they were. `out` must not overlap `a`, `w`, `bias` or the plan."""
    import cupy

    inputs = (a, w, bias)  # as the caller passed them: JAX in, JAX out (moefuse._interop)
    a, w = as_device_array(a, "a"), as_device_array(w, "w")
    bias = optional_device_array(bias, "bias")
    if a.ndim != 2 or a.shape[0] != routing.capacity:
        raise ValueError(f"a must be [routing.capacity={routing.capacity}, K], got {tuple(a.shape)}")
    if w.ndim != 3 or w.shape[0] != routing.num_local_experts or w.shape[2] != a.shape[1]:
        raise ValueError(
            f"w must be [E_local={routing.num_local_experts}, N, K={a.shape[1]}] (E_local from the "
            f"plan, K from a), got {tuple(w.shape)}"
        )
    num_n, depth = w.shape[1], w.shape[2]
    for size, what in ((num_n, "N (w.shape[1])"), (depth, "K (a.shape[1])")):
        if size == 0 or size % _validate.ROW_ALIGNMENT:
            raise ValueError(f"{what} must be a positive multiple of {_validate.ROW_ALIGNMENT}, got {size}")
    if a.dtype not in ACTIVATION_DTYPES:
        raise TypeError(f"a must be bfloat16 or float16, got {a.dtype}")
    if w.dtype != a.dtype:
        raise TypeError(f"w must have a's dtype {a.dtype}, got {w.dtype}")
    if bias is not None and (bias.dtype != w.dtype or bias.shape != (routing.num_local_experts, num_n)):
        raise ValueError(f"bias must be {w.dtype} [E_local, N], got {bias.dtype} {tuple(bias.shape)}")
    device_id, capturing = require_gpu(), _capture.capturing()
    if out is not None:
        out = as_device_array(out, "out")
        _validate.check_out(out, (routing.capacity, num_n), np.dtype(a.dtype))
        require_aligned(out, "out")
    reads = (("a", a), ("w", w), ("bias", bias), *_plan_arrays(routing))
    check_device(device_id, (*reads, ("out", out)))
    check_disjoint((("out", out),), reads)
    a, w = contiguous(a, "a", capturing), contiguous(w, "w", capturing)
    bias = None if bias is None else contiguous(bias, "bias", capturing)
    if out is None:
        out = cupy.empty((routing.capacity, num_n), dtype=a.dtype)
    if routing.max_tiles:
        backend = backends.for_device(device_id)
        elem = kernels.dtype_tag(a.dtype)
        kind = backends.CallKind(
            routing.num_tokens, routing.top_k, routing.num_local_experts, num_n, depth, elem, elem, False
        )
        config = backend.configure(kind, tile_m=routing.tile_m)
        backends.run(config.gemm2, backends.GemmArrays(a, w, bias, routing, out))
    return like_input(out, *inputs)


def workspace_bytes(
    num_tokens: int,
    top_k: int,
    w1,
    w2,
    *,
    fused_finalize: bool = True,
    out_dtype=None,
    activation: str | Activation = "swiglu",
    transposed: bool = False,
    interleaved: bool = False,
    w1_scale=None,
    w2_scale=None,
) -> int:
    """Device bytes `fused_moe(x, w1, w2, ..., workspace=buf)` needs for any batch of up to
    `num_tokens` tokens with `top_k` slots, this finalize path and output dtype (`buf.nbytes` must
    be at least this); the weights' activation and layout (and fp8 scales) as for `fused_moe`.
    Reads only the weights' shapes and dtype; the answer is for this GPU and the kernel choice in
    force (`moefuse.override`). fp8 weights: the same for bf16 and fp16 x."""
    layout = WeightLayout.of(activation, transposed, interleaved)
    dims = expert_weights(w1, w2, None, None, w1_scale, w2_scale, layout)[0]
    return layer_workspace_bytes(dims, num_tokens, top_k, fused_finalize, out_dtype)


def fused_moe(
    x,
    w1,
    w2,
    topk_weights,
    topk_ids,
    *,
    b1=None,
    b2=None,
    activation: str | Activation = "swiglu",
    transposed: bool = False,
    interleaved: bool = False,
    fused_finalize: bool = True,
    out=None,
    out_dtype=None,
    first_expert: int = 0,
    num_experts: int | None = None,
    workspace=None,
    w1_scale=None,
    w2_scale=None,
):
    """One MoE expert layer: `out[t] = sum_j w[t, j] * (act(x[t] @ w1[e].T + b1[e]) @ w2[e].T + b2[e])`.

    See `MoELayer` for the arguments (the activation and the weights' layout among them); this
    builds a layer for one call (no weight copies unless an input is not C-contiguous). Repeated
    calls with the same weights should hold a `MoELayer`. fp8 weights with `w1_scale`, `w2_scale`
    (Hopper only): see `MoELayer`.
    `workspace`: a device buffer of at least `workspace_bytes(T, k, w1, w2, ...)` bytes; with it
    (and `out=`) nothing is allocated. Under CUDA graph capture it is required: the workspace of a
    one-call layer would be freed while the graph still uses it."""
    primary = x  # as the caller passed it: JAX in, JAX out (moefuse._interop)
    x = as_device_array(x, "x")
    b1, b2 = optional_device_array(b1, "b1"), optional_device_array(b2, "b2")
    layout = WeightLayout.of(activation, transposed, interleaved)
    # a weight unlike x is named
    _, w1, w2, w1_scale, w2_scale = expert_weights(w1, w2, b1, b2, w1_scale, w2_scale, layout, x=x)
    if workspace is None and _capture.capturing():
        raise ValueError(
            "fused_moe under CUDA graph capture needs workspace= (a device buffer of "
            "moefuse.workspace_bytes(T, k, w1, w2, ...) bytes that outlives the graph), or a "
            "MoELayer, which keeps its workspace for the graph: the workspace of a one-call layer "
            "would be freed while the graph still uses it"
        )
    layer = MoELayer(
        w1,
        w2,
        b1,
        b2,
        activation=activation,
        transposed=transposed,
        interleaved=interleaved,
        first_expert=first_expert,
        num_experts=num_experts,
        w1_scale=w1_scale,
        w2_scale=w2_scale,
    )
    result = layer(
        x,
        topk_weights,
        topk_ids,
        out=out,
        out_dtype=out_dtype,
        fused_finalize=fused_finalize,
        workspace=workspace,
    )
    return like_input(result, primary, topk_weights, topk_ids, layer)
