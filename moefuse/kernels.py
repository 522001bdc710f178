"""Kernel names and launch geometry, mirroring the entry points in cuda_src/.

Every launch goes to CuPy's current stream. Nothing here synchronises with the host.
"""

from __future__ import annotations

import numpy as np

from . import _cache, _device

# routing.cu
PLAN_CHUNK = 512
SCAN_THREADS = 1024
TOPK_WARPS = 8
# finalize.cu
FINALIZE_THREADS = 128
# sm80/grouped_gemm.cu
GEMM_THREADS = 256
GEMM_BN = 128
GEMM_BK = 32
GEMM_STAGES = 4
GEMM_SMEM_LD = GEMM_BK + 8
GEMM_TILE_M = (64, 128)

_DTYPE_TAG = {np.dtype(np.float16): "f16"}
_NULL = np.uint64(0)


def dtype_tag(dtype) -> str:
    from ._arrays import BFLOAT16

    return "bf16" if np.dtype(dtype) == BFLOAT16 else _DTYPE_TAG[np.dtype(dtype)]


def gemm_smem_bytes(tile_m: int) -> int:
    return GEMM_STAGES * (tile_m + GEMM_BN) * GEMM_SMEM_LD * 2


def _function(module: str, name: str):
    device_id = _device.require_gpu()
    return _cache.load_module(module, device_id, _device.device_arch(device_id)).get_function(name)


def _i32(v: int) -> np.int32:
    return np.int32(v)


def _ptr(array) -> object:
    return _NULL if array is None else array


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def topk_softmax(logits, k: int, renormalize: bool, weights, ids) -> None:
    num_tokens, num_experts = logits.shape
    fn = _function("routing", "topk_softmax")
    grid = (_cdiv(num_tokens, TOPK_WARPS),)
    fn(
        grid,
        (TOPK_WARPS * 32,),
        (logits, _i32(num_tokens), _i32(num_experts), _i32(k), _i32(int(renormalize)), weights, ids),
    )


def build_plan(topk_ids, first_expert: int, num_local: int, tile_m: int, plan, rank, chunk_count) -> None:
    """Launch the four plan kernels into `plan`'s arrays, pre-filled by the caller (chunk_count 0;
    tile_expert and permuted_to_expanded -1). `rank` and `chunk_count` are scratch."""
    n_expanded = topk_ids.size
    num_chunks = _cdiv(n_expanded, PLAN_CHUNK)
    suffix = "i64" if topk_ids.dtype == np.int64 else "i32"
    common = (topk_ids, _i32(n_expanded), _i32(first_expert), _i32(num_local), _i32(num_chunks))
    _function("routing", f"plan_rank_{suffix}")((num_chunks,), (PLAN_CHUNK,), (*common, rank, chunk_count))
    _function("routing", "plan_scan_chunks")(
        (num_local,), (SCAN_THREADS,), (chunk_count, _i32(num_chunks), plan.expert_counts)
    )
    _function("routing", "plan_expert_offsets")(
        (1,),
        (SCAN_THREADS,),
        (plan.expert_counts, _i32(num_local), _i32(tile_m), plan.expert_offsets, plan.tile_expert),
    )
    _function("routing", f"plan_scatter_{suffix}")(
        (num_chunks,),
        (PLAN_CHUNK,),
        (
            *common,
            rank,
            chunk_count,
            plan.expert_offsets,
            plan.permuted_to_expanded,
            plan.expanded_to_permuted,
        ),
    )


def _gemm(name: str, plan, n_tiles: int, args: tuple) -> None:
    fn = _function("sm80_grouped_gemm", name)
    smem = gemm_smem_bytes(plan.tile_m)
    if fn.max_dynamic_shared_size_bytes < smem:
        fn.max_dynamic_shared_size_bytes = smem
    fn((plan.max_tiles, n_tiles), (GEMM_THREADS,), args, shared_mem=smem)


def gemm1_swiglu(x, w1, b1, plan, h) -> None:
    """h[p] = SwiGLU(x[token(p)] @ w1[e].T + b1[e]) for every routed permuted row p."""
    inter, hidden = w1.shape[1] // 2, w1.shape[2]
    name = f"gemm1_swiglu_{dtype_tag(x.dtype)}_m{plan.tile_m}"
    args = (
        x,
        w1,
        _ptr(b1),
        plan.tile_expert,
        plan.permuted_to_expanded,
        _NULL,
        h,
        _i32(hidden),
        _i32(inter),
        _i32(plan.top_k),
    )
    _gemm(name, plan, _cdiv(inter, GEMM_BN // 2), args)


def gemm2_store(h, w2, b2, plan, y) -> None:
    """y[p] = h[p] @ w2[e].T + b2[e] for every routed permuted row p (padding rows untouched)."""
    n, k = w2.shape[1], w2.shape[2]
    name = f"gemm2_store_{dtype_tag(h.dtype)}_m{plan.tile_m}"
    args = (
        h,
        w2,
        _ptr(b2),
        plan.tile_expert,
        plan.permuted_to_expanded,
        _NULL,
        y,
        _i32(k),
        _i32(n),
        _i32(plan.top_k),
    )
    _gemm(name, plan, _cdiv(n, GEMM_BN), args)


def gemm2_scatter(h, w2, b2, plan, topk_weights, out) -> None:
    """out[token(p)] += w(p) * (h[p] @ w2[e].T + b2[e]) with hardware atomics; out pre-zeroed."""
    n, k = w2.shape[1], w2.shape[2]
    out_tag = "f32" if out.dtype == np.float32 else dtype_tag(out.dtype)
    name = f"gemm2_scatter_{dtype_tag(h.dtype)}_m{plan.tile_m}_out_{out_tag}"
    args = (
        h,
        w2,
        _ptr(b2),
        plan.tile_expert,
        plan.permuted_to_expanded,
        topk_weights,
        out,
        _i32(k),
        _i32(n),
        _i32(plan.top_k),
    )
    _gemm(name, plan, _cdiv(n, GEMM_BN), args)


def finalize(y, plan, topk_weights, out) -> None:
    """out[t] = sum_j w[t, j] * y[permuted(t, j)], in slot order, fp32 accumulation."""
    num_tokens, hidden = out.shape
    out_tag = "f32" if out.dtype == np.float32 else dtype_tag(out.dtype)
    fn = _function("finalize", f"finalize_{dtype_tag(y.dtype)}_out_{out_tag}")
    fn(
        (num_tokens,),
        (FINALIZE_THREADS,),
        (y, plan.expanded_to_permuted, topk_weights, _i32(plan.top_k), _i32(hidden), out),
    )
