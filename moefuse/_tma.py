"""TMA tensor-map descriptors, encoded on the host and passed to kernels by value."""

from __future__ import annotations

import ctypes
from functools import cache, lru_cache

import numpy as np

BOX_COLS = 64  # one 128-byte row of 16-bit elements: the kernels' K block and swizzle span


@cache
def _driver():
    from cuda.bindings import driver

    (err,) = driver.cuInit(0)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuInit failed: {err}")
    return driver


@lru_cache(maxsize=256)
def _encode(ptr: int, rows: int, cols: int, is_bf16: bool, box_rows: int) -> np.void:
    driver = _driver()
    types = driver.CUtensorMapDataType
    u32, u64 = driver.cuuint32_t, driver.cuuint64_t
    err, tensor_map = driver.cuTensorMapEncodeTiled(
        types.CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 if is_bf16 else types.CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
        2,
        ptr,
        [u64(cols), u64(rows)],  # innermost first
        [u64(cols * 2)],  # row stride in bytes
        [u32(BOX_COLS), u32(box_rows)],
        [u32(1), u32(1)],
        driver.CUtensorMapInterleave.CU_TENSOR_MAP_INTERLEAVE_NONE,
        driver.CUtensorMapSwizzle.CU_TENSOR_MAP_SWIZZLE_128B,
        driver.CUtensorMapL2promotion.CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
        driver.CUtensorMapFloatOOBfill.CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,  # out of bounds -> 0
    )
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"cuTensorMapEncodeTiled({rows}x{cols}, box {box_rows}) failed: {err}")
    return np.frombuffer(ctypes.string_at(tensor_map.getPtr(), 128), dtype="V128")[0]


def tile_desc(matrix, box_rows: int) -> np.void:
    """Descriptor of a row-major 16-bit matrix (any leading dims flattened into rows), loaded in
    boxes of `box_rows` rows x 64 columns with the 128-byte swizzle."""
    from ._arrays import BFLOAT16

    cols = matrix.shape[-1]
    rows = matrix.size // cols
    return _encode(matrix.data.ptr, rows, cols, np.dtype(matrix.dtype) == BFLOAT16, box_rows)
