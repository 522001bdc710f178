"""The GPU's ceilings, measured in the same run as the cases: a cuBLAS matmul through CuPy and a
device-to-device copy. A case's floor is max(FLOPs / matmul ceiling, bytes / copy ceiling)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import cupy as cp
import numpy as np

from .device import GiB
from .dtypes import BF16, FP16, rel_err, to_f32
from .problems import randn
from .timing import Timing, median_ms

MATMUL_N = 8192


@dataclass(frozen=True)
class Ceilings:
    matmul_tflops: float
    matmul_dtype: str
    copy_gbps: float  # bytes read + bytes written

    def floor_seconds(self, flops: float, nbytes: float) -> float:
        return max(flops / self.matmul_tflops / 1e12, nbytes / self.copy_gbps / 1e9)


def probe_bf16_matmul() -> bool:
    """True if cupy.matmul takes bf16 operands (one transposed) and gets the product right."""
    try:
        a, b = randn((64, 96), 1.0, BF16), randn((32, 96), 1.0, BF16)
        return rel_err(to_f32(cp.matmul(a, b.T)), to_f32(a) @ to_f32(b).T) < 1e-2
    except Exception:
        return False


# A ceiling is a burst of 20 calls after 3 warm-ups, however long they take.
CEILING_TIMING = Timing(reps=20, warmup=3, max_seconds=60)


def matmul_tflops(stream: cp.cuda.Stream, dtype: np.dtype, rest: float, n: int = MATMUL_N) -> float:
    a, b = randn((n, n), 1.0, dtype), randn((n, n), 1.0, dtype)
    ms = median_ms(lambda _: cp.matmul(a, b), stream, replace(CEILING_TIMING, rest=rest))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(stream: cp.cuda.Stream, rest: float, nbytes: int = GiB) -> float:
    src, dst = cp.ones(nbytes, dtype=cp.uint8), cp.empty(nbytes, dtype=cp.uint8)
    d2d = cp.cuda.runtime.memcpyDeviceToDevice

    def copy(_: int) -> None:
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, d2d, stream.ptr)

    ms = median_ms(copy, stream, replace(CEILING_TIMING, rest=rest))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure(stream: cp.cuda.Stream, rest: float, bf16_matmul: bool) -> Ceilings:
    """Both ceilings; the matmul's in bf16 where cupy.matmul takes it, else in fp16."""
    return Ceilings(
        matmul_tflops=matmul_tflops(stream, BF16 if bf16_matmul else FP16, rest),
        matmul_dtype="bf16" if bf16_matmul else "fp16 (CuPy refused bf16)",
        copy_gbps=copy_gbps(stream, rest),
    )
