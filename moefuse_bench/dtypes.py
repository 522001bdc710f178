"""bf16 and fp16 on the GPU through uint16 views: conversions, SwiGLU, relative errors.

bf16 conversions, SwiGLU and row gathers run on uint16 views through small ElementwiseKernels, so
only cupy.matmul must know the bfloat16 dtype (CuPy has no bf16 arithmetic of its own).
"""

from __future__ import annotations

import functools

import cupy as cp
import ml_dtypes
import numpy as np

BF16 = np.dtype(ml_dtypes.bfloat16)
FP16 = np.dtype(np.float16)


@functools.cache
def _kernels() -> dict[str, cp.ElementwiseKernel]:
    rne = "unsigned int b = __float_as_uint(r); b += 0x7FFFu + ((b >> 16) & 1u); y = b >> 16;"
    silu = "float r = g / (1.0f + expf(-g)) * u;"
    bits = "float g = __uint_as_float((unsigned int)gb << 16);"
    bits += "float u = __uint_as_float((unsigned int)ub << 16);"
    ek = cp.ElementwiseKernel
    return {
        "b2f": ek("uint16 b", "float32 y", "y = __uint_as_float((unsigned int)b << 16)", "bench_b2f"),
        "f2b": ek("float32 r", "uint16 y", rne, "bench_f2b"),
        "swiglu_bf16": ek("uint16 gb, uint16 ub", "uint16 y", bits + silu + rne, "bench_swiglu"),
        "swiglu_f16": ek("T gh, T uh", "T y", "float g = gh, u = uh;" + silu + "y = (T)r;", "bench_swiglu_h"),
    }


def to_f32(a: cp.ndarray) -> cp.ndarray:
    return _kernels()["b2f"](a.view(cp.uint16)) if a.dtype == BF16 else a.astype(cp.float32)


def f32_to_bits(a: cp.ndarray, dtype: np.dtype) -> cp.ndarray:
    """fp32 -> the uint16 bit pattern of `dtype` (bf16: round to nearest even; or fp16)."""
    return _kernels()["f2b"](a) if dtype == BF16 else a.astype(cp.float16).view(cp.uint16)


def from_f32(a: cp.ndarray, dtype: np.dtype) -> cp.ndarray:
    return f32_to_bits(a, dtype).view(dtype)


def swiglu(h: cp.ndarray) -> cp.ndarray:
    """h [n, 2I] (gate | up) -> silu(gate) * up [n, I], computed in fp32."""
    i = h.shape[1] // 2
    if h.dtype == BF16:
        hb = h.view(cp.uint16)
        return _kernels()["swiglu_bf16"](hb[:, :i], hb[:, i:]).view(h.dtype)
    return _kernels()["swiglu_f16"](h[:, :i], h[:, i:])


def rel_err(a: cp.ndarray, ref: cp.ndarray) -> float:
    """||a - ref|| / ||ref||, in fp32."""
    a32, r32 = to_f32(a), to_f32(ref)
    return float(cp.linalg.norm(a32 - r32) / cp.linalg.norm(r32))
