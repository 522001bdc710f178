"""TMA tensor-map descriptors, encoded on the host and passed to kernels by value."""

from __future__ import annotations

import ctypes
from functools import cache, lru_cache

import numpy as np

from ._arrays import BFLOAT16, FLOAT16, FLOAT32, UINT8

# The tensor-map data type of each element type moefuse loads by TMA (e4m3 travels as its uint8
# bits: TMA only moves bytes).
_DATA_TYPES = {BFLOAT16: "BFLOAT16", FLOAT16: "FLOAT16", UINT8: "UINT8", FLOAT32: "FLOAT32"}


@cache
def _driver():
    from cuda.bindings import driver

    (err,) = driver.cuInit(0)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuInit failed: {err}")
    return driver


@lru_cache(maxsize=256)
def _encode(
    ptr: int,
    dims: tuple[int, ...],
    strides: tuple[int, ...],
    box: tuple[int, ...],
    data_type: str,
    swizzle: bool = True,
) -> np.void:
    """A tiled map of a tensor of `data_type` (a CUtensorMapDataType name: BFLOAT16, FLOAT16,
    UINT8, FLOAT32): `dims` and `box` innermost first, `strides` in bytes for dims[1:]. 128-byte
    swizzle (operand tiles) or none (`swizzle=False`: scale rows, read as plain arrays);
    out-of-bounds elements load as zeros."""
    driver = _driver()
    types = driver.CUtensorMapDataType
    u32, u64 = driver.cuuint32_t, driver.cuuint64_t
    swizzles = driver.CUtensorMapSwizzle
    err, tensor_map = driver.cuTensorMapEncodeTiled(
        getattr(types, f"CU_TENSOR_MAP_DATA_TYPE_{data_type}"),
        len(dims),
        ptr,
        [u64(d) for d in dims],
        [u64(s) for s in strides],
        [u32(b) for b in box],
        [u32(1)] * len(dims),
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        swizzles.CU_TENSOR_MAP_SWIZZLE_128B if swizzle else swizzles.CU_TENSOR_MAP_SWIZZLE_NONE,
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,  # out of bounds -> 0
    )
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled(dims {dims}, box {box}) failed: {err}")
    return np.frombuffer(ctypes.string_at(tensor_map.getPtr(), 128), dtype="V128")[0]


def _data_type(array) -> str:
    """The map's data type of `array`'s elements (bf16, fp16, e4m3 bits as uint8, fp32)."""
    found = _DATA_TYPES.get(np.dtype(array.dtype))
    if found is None:
        raise TypeError(f"no TMA data type for {np.dtype(array.dtype)}")
    return found


def tile_desc(matrix, box_rows: int, box_cols: int) -> np.void:
    """Descriptor of a row-major matrix (any leading dims flattened into rows), loaded in boxes of
    `box_rows` rows x `box_cols` columns (the kernel's K block: one 128-byte swizzled row: 64
    16-bit or 128 e4m3 elements)."""
    cols = matrix.shape[-1]
    rows = matrix.size // cols
    row_bytes = cols * np.dtype(matrix.dtype).itemsize
    return _encode(matrix.data.ptr, (cols, rows), (row_bytes,), (box_cols, box_rows), _data_type(matrix))


def scale_desc(scales, box_rows: int, groups: int) -> np.void:
    """Descriptor of fp32 scales `[G, rows]` (h_s: one row of the permuted rows' scales per group
    of K), seen as (row, group) and loaded, unswizzled, in boxes of `box_rows` rows x `groups`
    groups (an fp8 GEMM2's A tile's scales for one K block). Groups past G load as zeros."""
    num_groups, rows = scales.shape
    row_bytes = rows * np.dtype(scales.dtype).itemsize
    return _encode(
        scales.data.ptr, (rows, num_groups), (row_bytes,), (box_rows, groups), _data_type(scales), False
    )


def weights_desc(w, box_n: int, tile_k: int, halves: bool, layout) -> np.void:
    """The map of expert weights `w` stored in `layout`: [E, R, K], or transposed [E, K, R], R = N
    (2I for a gated GEMM1), loaded in boxes of `box_n` along R (MN-major: one 64-wide block) and
    `tile_k` along K. `halves` (a gated GEMM1 that loads gate and up separately) sees w as
    (k, feature j, gate | up, expert), whose strides read gate and up rows concatenated or
    interleaved; otherwise (k, n, expert). Each innermost dimension first as the kernel's box is
    laid out. An expert's own bounds zero-fill a tile that runs past its N or K."""
    mn = layout.transposed
    experts, size = w.shape[0], np.dtype(w.dtype).itemsize
    depth, rows = (w.shape[1], w.shape[2]) if mn else (w.shape[2], w.shape[1])
    if mn:  # (n, k, expert); halves: (j, k, gate | up, expert), up's columns I after gate's
        dims, strides, box = [rows, depth], [rows * size], [box_n, tile_k]
        if halves:
            dims, strides = [rows // 2, depth, 2], [rows * size, rows // 2 * size]
    else:  # (k, n, expert); halves: (k, j, gate | up, expert)
        row = depth * size
        dims, strides, box = [depth, rows], [row], [tile_k, box_n]
        if halves:  # gate j's and up j's rows: 2j and 2j + 1 interleaved, else j and I + j
            dims = [depth, rows // 2, 2]
            strides = [2 * row, row] if layout.interleaved else [row, rows // 2 * row]
    if halves:
        box.append(1)
    expert_bytes = rows * depth * size
    return _encode(w.data.ptr, (*dims, experts), (*strides, expert_bytes), (*box, 1), _data_type(w))


def gate_up_groups_desc(w1, groups: int, group: int, box_cols: int, interleaved: bool) -> np.void:
    """Descriptor of w1 [E, 2I, H] (gate rows [0, I) and up rows [I, 2I), or `interleaved`: gate j
    and up j at rows 2j, 2j + 1) seen as (H, group, 2, I / group, E): a box of `box_cols` columns x
    `groups` groups holds, group after group, the gate rows of `group` consecutive features then
    their up rows (the swapped GEMM1's A tile, cuda_src/sm90/swapped.cuh)."""
    experts, two_inter, hidden = w1.shape
    inter = two_inter // 2
    row = hidden * np.dtype(w1.dtype).itemsize
    feature, half = (2 * row, row) if interleaved else (row, inter * row)
    dims = (hidden, group, 2, inter // group, experts)
    strides = (feature, half, group * feature, two_inter * row)
    box = (box_cols, group, 2, groups, 1)
    return _encode(w1.data.ptr, dims, strides, box, _data_type(w1))
