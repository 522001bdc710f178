"""Kernel names and launch geometry, mirroring the entry points in cuda_src/.

Every launch goes to CuPy's current stream. Nothing here synchronises with the host.
"""

from __future__ import annotations

import numpy as np

from . import _cache, _device

# routing.cu
PLAN_CHUNK = 512
SCAN_THREADS = 1024
PLAN_SMALL_ENTRIES = 128  # routing.cu: the limits of the one-launch plans
PLAN_BLOCK_THREADS = 1024
PLAN_BLOCK_ENTRIES = 4 * PLAN_BLOCK_THREADS
PLAN_BLOCK_EXPERTS = 256
TOPK_WARPS = 8
# permute.cu
GATHER_WARPS = 8
GATHER_MAX_BLOCKS = 4096
FINALIZE_THREADS = 128

NULL = np.uint64(0)


def dtype_tag(dtype) -> str:
    """The kernel-name tag of an element type: bf16, f16 (or f32 for outputs)."""
    from ._arrays import BFLOAT16, FLOAT16, FLOAT32

    return {BFLOAT16: "bf16", FLOAT16: "f16", FLOAT32: "f32"}[np.dtype(dtype)]


def function(module: str, name: str):
    device_id = _device.require_gpu()
    return _cache.load_function(module, name, device_id, _device.device_arch(device_id))


_dynamic_smem_limit: dict[object, int] = {}  # per kernel: the limit launch() has set


def launch(fn, grid: tuple, block: tuple, args: tuple, smem: int) -> None:
    """Launch `fn` with `smem` bytes of dynamic shared memory, raising its limit first if needed."""
    if _dynamic_smem_limit.get(fn, 0) < smem:
        fn.max_dynamic_shared_size_bytes = max(smem, fn.max_dynamic_shared_size_bytes)
        _dynamic_smem_limit[fn] = fn.max_dynamic_shared_size_bytes
    fn(grid, block, args, shared_mem=smem)


def i32(v: int) -> np.int32:
    return np.int32(v)


def pointer(array) -> object:
    """A kernel pointer argument: the array, or NULL for None."""
    return NULL if array is None else array


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def topk_softmax(logits, k: int, renormalize: bool, weights, ids) -> None:
    num_tokens, num_experts = logits.shape
    fn = function("routing", "topk_softmax")
    grid = (cdiv(num_tokens, TOPK_WARPS),)
    fn(
        grid,
        (TOPK_WARPS * 32,),
        (logits, i32(num_tokens), i32(num_experts), i32(k), i32(int(renormalize)), weights, ids),
    )


def build_plan(topk_ids, plan, rank, chunk_count) -> None:
    """Launch the plan kernels into `plan`'s arrays (they fill every entry themselves);
    `rank` and `chunk_count` are scratch. One kernel up to PLAN_BLOCK_ENTRIES entries and
    PLAN_BLOCK_EXPERTS local experts (plan_small up to PLAN_SMALL_ENTRIES), else four."""
    n_expanded = topk_ids.size
    num_chunks = cdiv(n_expanded, PLAN_CHUNK)
    suffix = "i64" if topk_ids.dtype == np.int64 else "i32"
    num_local = plan.num_local_experts
    head = (topk_ids, i32(n_expanded), i32(plan.first_expert), i32(num_local))
    unrouted = (plan.tile_expert, i32(plan.max_tiles), plan.permuted_to_expanded, i32(plan.capacity))
    one_block_args = (
        *head,
        i32(plan.tile_m),
        plan.expert_counts,
        plan.expert_offsets,
        *unrouted,
        plan.expanded_to_permuted,
    )
    if n_expanded <= PLAN_SMALL_ENTRIES:
        function("routing", f"plan_small_{suffix}")((1,), (PLAN_CHUNK,), one_block_args)
        return
    if n_expanded <= PLAN_BLOCK_ENTRIES and num_local <= PLAN_BLOCK_EXPERTS:
        # One pass up to 1024 entries; at least 512 threads, which clear the padding slots.
        threads = min(PLAN_BLOCK_THREADS, max(512, 32 * cdiv(n_expanded, 32)))
        function("routing", f"plan_one_block_{suffix}")((1,), (threads,), one_block_args)
        return
    head = (*head, i32(num_chunks))
    function("routing", f"plan_rank_{suffix}")(
        (num_chunks,), (PLAN_CHUNK,), (*head, rank, chunk_count, *unrouted)
    )
    function("routing", "plan_scan_chunks")(
        (num_local,), (SCAN_THREADS,), (chunk_count, i32(num_chunks), plan.expert_counts)
    )
    function("routing", "plan_expert_offsets")(
        (1,),
        (SCAN_THREADS,),
        (plan.expert_counts, i32(num_local), i32(plan.tile_m), plan.expert_offsets, plan.tile_expert),
    )
    function("routing", f"plan_scatter_{suffix}")(
        (num_chunks,),
        (PLAN_CHUNK,),
        (*head, rank, chunk_count, plan.expert_offsets, plan.permuted_to_expanded, plan.expanded_to_permuted),
    )


def gather_rows(x, plan, x_perm) -> None:
    """x_perm[p] = x[token(p)] for every routed permuted row p (padding rows untouched)."""
    num_tokens = x.shape[0]
    grid = min(cdiv(num_tokens, GATHER_WARPS), GATHER_MAX_BLOCKS)
    row_vectors = x.shape[1] * x.itemsize // 16
    args = (x, plan.expanded_to_permuted, i32(num_tokens), i32(plan.top_k), i32(row_vectors), x_perm)
    function("permute", "gather_rows")((grid,), (GATHER_WARPS * 32,), args)


def finalize(y, plan, topk_weights, out) -> None:
    """out[t] = sum_j w[t, j] * y[permuted(t, j)], in slot order, fp32 accumulation."""
    num_tokens, hidden = out.shape
    fn = function("permute", f"finalize_{dtype_tag(y.dtype)}_out_{dtype_tag(out.dtype)}")
    fn(
        (num_tokens,),
        (FINALIZE_THREADS,),
        (y, plan.expanded_to_permuted, topk_weights, i32(plan.top_k), i32(hidden), out),
    )
