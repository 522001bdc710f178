"""Taking arrays from users: CuPy arrays as they are, foreign GPU arrays without a copy."""

from __future__ import annotations

import ml_dtypes
import numpy as np

from . import _capture
from ._device import require_gpu

BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
FLOAT16 = np.dtype(np.float16)
FLOAT32 = np.dtype(np.float32)
E4M3 = np.dtype(ml_dtypes.float8_e4m3fn)  # fp8 weights; CuPy holds them as UINT8 bits (moefuse.fp8)
UINT8 = np.dtype(np.uint8)
ACTIVATION_DTYPES = (BFLOAT16, FLOAT16)
LOGIT_DTYPES = (FLOAT32, BFLOAT16, FLOAT16)  # the router kernel reads these as they are
DLPACK_CUDA_DEVICES = (2, 13)  # kDLCUDA, kDLCUDAManaged


def as_device_array(obj, name: str):
    """`obj` as a CuPy array sharing its memory; TypeError naming `name` for host arrays.

    PyTorch and JAX arrays come through DLPack (their `__cuda_array_interface__`, where present,
    has no bf16 type code); anything else exposing `__cuda_array_interface__` through CuPy."""
    import cupy

    if isinstance(obj, cupy.ndarray):  # the common case, first: every forward takes a few
        return obj
    if isinstance(obj, np.ndarray) or np.isscalar(obj):
        raise TypeError(
            f"{name} must be a GPU array (CuPy, PyTorch or JAX on a CUDA device), got a host "
            f"{type(obj).__name__}; move it to the GPU first, e.g. cupy.asarray({name})"
        )
    dlpack_device = getattr(obj, "__dlpack_device__", None)
    if dlpack_device is not None and dlpack_device()[0] not in DLPACK_CUDA_DEVICES:
        raise TypeError(f"{name} must live on a CUDA device; it is on DLPack device {dlpack_device()}")
    if not (hasattr(obj, "__dlpack__") or hasattr(obj, "__cuda_array_interface__")):
        raise TypeError(f"{name} must be a GPU array (CuPy, PyTorch or JAX), got {type(obj).__name__}")
    require_gpu()
    if hasattr(obj, "__dlpack__"):
        return cupy.from_dlpack(obj)
    return cupy.asarray(obj)


def optional_device_array(obj, name: str):
    return None if obj is None else as_device_array(obj, name)


def contiguous(array, name: str, capturing: bool = False):
    """C-contiguous and 16-byte aligned `array` (the kernels move rows as 16-byte vectors and TMA
    boxes), copied only when it is not already (a documented copy; refused under graph capture,
    where the copy would be freed while the graph still reads it)."""
    import cupy

    if array.flags.c_contiguous and array.data.ptr % 16 == 0:
        return array
    if capturing:
        _capture.refuse_copy(name)
    return cupy.array(array, order="C", copy=True)


def device_buffer(obj, name: str):
    """A caller's scratch buffer as a CuPy array: any C-contiguous, 16-byte aligned device array."""
    buffer = as_device_array(obj, name)
    if not buffer.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    require_aligned(buffer, name)
    return buffer


def require_aligned(array, name: str) -> None:
    """Output arrays are written with 16-byte vector stores: their base must be 16-byte aligned."""
    if array.data.ptr % 16:
        raise ValueError(f"{name} must start at a 16-byte aligned address (a fresh array does)")
