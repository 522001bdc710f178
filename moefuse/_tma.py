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


def gate_up_groups_desc(w1, groups: int, group: int, box_cols: int) -> np.void:
    """Descriptor of w1 [E, 2I, H] (gate rows [0, I), up rows [I, 2I)) seen as
    (H, group, 2, I / group, E): a box of `box_cols` columns x `groups` groups holds, group after
    group, the gate rows of `group` consecutive features then their up rows (the swapped GEMM1's
    A tile, cuda_src/sm90/swapped.cuh)."""
    experts, two_inter, hidden = w1.shape
    inter = two_inter // 2
    row = hidden * 2
    dims = (hidden, group, 2, inter // group, experts)
    strides = (row, inter * row, group * row, two_inter * row)
    box = (box_cols, group, 2, groups, 1)
    return _encode(w1.data.ptr, dims, strides, box, _is_bf16(w1))
