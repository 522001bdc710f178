"""The GPU's ceilings, measured in the same run as the cases: a cuBLAS matmul through CuPy (with
fp8 weights, an e4m3 one through torch._scaled_mm) and a device-to-device copy. A case's floor is
max(FLOPs / matmul ceiling, bytes / copy ceiling)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import cupy as cp
import numpy as np

from .device import GiB, short
from .dtypes import BF16, FP16, rel_err, to_f32
from .problems import randn
from .timing import Timing, median_ms

MATMUL_N = 8192
# cuBLAS reaches its fp8 peak with fast accumulation (the tensor cores' own, not promoted to fp32;
# probes/fp8_probe.py times both): the ceiling is the fastest fp8 matmul there is.
FP8_FAST_ACCUM = True


@dataclass(frozen=True)
class Ceilings:
    matmul_tflops: float
    matmul_dtype: str
    copy_gbps: float  # bytes read + bytes written
    matmul_via: str = "cuBLAS via CuPy"

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


def fp8_matmul_tflops(stream: cp.cuda.Stream, rest: float, n: int = MATMUL_N) -> float:
    """torch._scaled_mm on e4m3 operands (rowwise fp32 scales, bf16 out; b column-major, as it
    wants) on `stream`. Raises where torch does not import or has no fp8 matmul here."""
    import torch

    device, f8 = torch.device("cuda", cp.cuda.Device().id), torch.float8_e4m3fn
    torch_stream = torch.cuda.ExternalStream(stream.ptr)
    with torch.cuda.stream(torch_stream):
        a = torch.randn(n, n, device=device).to(f8)
        b = torch.randn(n, n, device=device).to(f8).t()
        sa, sb = torch.ones(n, 1, device=device), torch.ones(1, n, device=device)

    def matmul(_: int) -> None:
        with torch.cuda.stream(torch_stream):
            torch._scaled_mm(a, b, sa, sb, out_dtype=torch.bfloat16, use_fast_accum=FP8_FAST_ACCUM)

    ms = median_ms(matmul, stream, replace(CEILING_TIMING, rest=rest))
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_gbps(stream: cp.cuda.Stream, rest: float, nbytes: int = GiB) -> float:
    src, dst = cp.ones(nbytes, dtype=cp.uint8), cp.empty(nbytes, dtype=cp.uint8)
    d2d = cp.cuda.runtime.memcpyDeviceToDevice

    def copy(_: int) -> None:
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, d2d, stream.ptr)

    ms = median_ms(copy, stream, replace(CEILING_TIMING, rest=rest))
    return 2 * nbytes / (ms * 1e-3) / 1e9


def measure(stream: cp.cuda.Stream, rest: float, bf16_matmul: bool, fp8: bool = False) -> Ceilings:
    """Both ceilings; the matmul's in fp8 for fp8 weights where torch can run it, else in bf16
    where cupy.matmul takes it, else in fp16 (the header then says why)."""
    fallback = ""
    if fp8:
        try:
            tflops = fp8_matmul_tflops(stream, rest)
        except Exception as e:  # torch absent, or without fp8 here
            fallback = f" (no fp8 ceiling, so the fp8 floors use this one: {short(e)})"
        else:
            label = f"fp8 e4m3 (rowwise scales, bf16 out, use_fast_accum={FP8_FAST_ACCUM})"
            return Ceilings(tflops, label, copy_gbps(stream, rest), "torch._scaled_mm")
    return Ceilings(
        matmul_tflops=matmul_tflops(stream, BF16 if bf16_matmul else FP16, rest),
        matmul_dtype=("bf16" if bf16_matmul else "fp16 (CuPy refused bf16)") + fallback,
        copy_gbps=copy_gbps(stream, rest),
    )
