"""TMA tensor-map descriptors, encoded on the host and passed to kernels by value."""

from __future__ import annotations

import ctypes
from functools import cache, lru_cache

import numpy as np

from ._arrays import BFLOAT16


@cache
def _driver():
    from cuda.bindings import driver

    (err,) = driver.cuInit(0)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuInit failed: {err}")
    return driver


@lru_cache(maxsize=256)
def _encode(
    ptr: int, dims: tuple[int, ...], strides: tuple[int, ...], box: tuple[int, ...], is_bf16: bool
) -> np.void:
    """A tiled map of a 16-bit tensor: `dims` and `box` innermost first, `strides` in bytes for
    dims[1:]. 128-byte swizzle; out-of-bounds elements load as zeros."""
    driver = _driver()
    types = driver.CUtensorMapDataType
    u32, u64 = driver.cuuint32_t, driver.cuuint64_t
    err, tensor_map = driver.cuTensorMapEncodeTiled(
        types.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 if is_bf16 else types.CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        len(dims),
        ptr,
        [u64(d) for d in dims],
        [u64(s) for s in strides],
        [u32(b) for b in box],
        [u32(1)] * len(dims),
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        driver.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,  # out of bounds -> 0
    )
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled(dims {dims}, box {box}) failed: {err}")
    return np.frombuffer(ctypes.string_at(tensor_map.getPtr(), 128), dtype="V128")[0]


def _is_bf16(array) -> bool:
    return array.dtype == BFLOAT16


def tile_desc(matrix, box_rows: int, box_cols: int) -> np.void:
    """Descriptor of a row-major 16-bit matrix (any leading dims flattened into rows), loaded in
    boxes of `box_rows` rows x `box_cols` columns (the kernel's K block: one 128-byte swizzled
    row)."""
    cols = matrix.shape[-1]
    rows = matrix.size // cols
    return _encode(matrix.data.ptr, (cols, rows), (cols * 2,), (box_cols, box_rows), _is_bf16(matrix))


def weights_desc(w, box_n: int, tile_k: int, halves: bool, layout) -> np.void:
    """The map of expert weights `w` stored in `layout`: [E, R, K], or transposed [E, K, R], R = N
    (2I for a gated GEMM1), loaded in boxes of `box_n` along R (MN-major: one 64-wide block) and
    `tile_k` along K. `halves` (a gated GEMM1 that loads gate and up separately) sees w as
    (k, feature j, gate | up, expert), whose strides read gate and up rows concatenated or
    interleaved; otherwise (k, n, expert). Each innermost dimension first as the kernel's box is
    laid out. An expert's own bounds zero-fill a tile that runs past its N or K."""
    mn = layout.transposed
    experts = w.shape[0]
    depth, rows = (w.shape[1], w.shape[2]) if mn else (w.shape[2], w.shape[1])
    if mn:  # (n, k, expert); halves: (j, k, gate | up, expert), up's columns I after gate's
        dims, strides, box = [rows, depth], [rows * 2], [box_n, tile_k]
        if halves:
            dims, strides = [rows // 2, depth, 2], [rows * 2, rows // 2 * 2]
    else:  # (k, n, expert); halves: (k, j, gate | up, expert)
        row = depth * 2
        dims, strides, box = [depth, rows], [row], [tile_k, box_n]
        if halves:  # gate j's and up j's rows: 2j and 2j + 1 interleaved, else j and I + j
            dims = [depth, rows // 2, 2]
            strides = [2 * row, row] if layout.interleaved else [row, rows // 2 * row]
    if halves:
        box.append(1)
    expert_bytes = rows * depth * 2
    return _encode(w.data.ptr, (*dims, experts), (*strides, expert_bytes), (*box, 1), _is_bf16(w))


def gate_up_groups_desc(w1, groups: int, group: int, box_cols: int, interleaved: bool) -> np.void:
    """Descriptor of w1 [E, 2I, H] (gate rows [0, I) and up rows [I, 2I), or `interleaved`: gate j
    and up j at rows 2j, 2j + 1) seen as (H, group, 2, I / group, E): a box of `box_cols` columns x
    `groups` groups holds, group after group, the gate rows of `group` consecutive features then
    their up rows (the swapped GEMM1's A tile, cuda_src/sm90/swapped.cuh)."""
    experts, two_inter, hidden = w1.shape
    inter = two_inter // 2
    row = hidden * 2
    feature, half = (2 * row, row) if interleaved else (row, inter * row)
    dims = (hidden, group, 2, inter // group, experts)
    strides = (feature, half, group * feature, two_inter * row)
    box = (box_cols, group, 2, groups, 1)
    return _encode(w1.data.ptr, dims, strides, box, _is_bf16(w1))
