"""The two baselines moefuse is compared with: a CuPy per-expert loop and torch._grouped_mm.

torch is imported inside `torch_baseline` alone, and only when it is asked for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import cupy as cp
import numpy as np

from .dtypes import BF16, from_f32, swiglu, to_f32
from .shapes import Shape


def cupy_baseline(
    w1: cp.ndarray, w2: cp.ndarray, k: int, bf16_mm: bool
) -> Callable[[cp.ndarray, cp.ndarray, cp.ndarray], cp.ndarray]:
    """Per-expert loop: sort by expert, gather rows, two matmuls per expert, CuPy finalize.
    Where cupy.matmul refuses bf16 (`bf16_mm` False), its matmuls upcast to fp32."""
    E, H = w1.shape[0], w1.shape[2]
    w1t = [w1[e].T for e in range(E)]  # [H, 2I] views: cuBLAS transposes, nothing is copied
    w2t = [w2[e].T for e in range(E)]  # [I, H]

    def mm(a: cp.ndarray, b: cp.ndarray) -> cp.ndarray:
        if a.dtype != BF16 or bf16_mm:
            return cp.matmul(a, b)
        return from_f32(cp.matmul(to_f32(a), to_f32(b)), a.dtype)

    def run(x: cp.ndarray, w: cp.ndarray, ids: cp.ndarray) -> cp.ndarray:
        T = x.shape[0]
        flat = ids.ravel()
        order = cp.argsort(flat)
        counts = cp.bincount(flat, minlength=E).get()  # host sync: allowed in the baseline
        ends = np.cumsum(counts)
        xs = x.view(cp.uint16)[order // k].view(x.dtype)  # [T*k, H] grouped by expert
        ys = cp.empty((T * k, H), dtype=cp.uint16)
        for e in np.flatnonzero(counts):
            lo, hi = int(ends[e] - counts[e]), int(ends[e])
            ys[lo:hi] = mm(swiglu(mm(xs[lo:hi], w1t[e])), w2t[e]).view(cp.uint16)
        y = cp.empty((T * k, H), dtype=cp.float32)
        y[order] = to_f32(ys.view(x.dtype))  # back to expanded (t*k + j) order
        out = cp.matmul(w[:, None, :], y.reshape(T, k, H))  # sum_j w[t,j] * y[t,j] in fp32
        return from_f32(out.reshape(T, H), x.dtype)

    return run


def torch_baseline(
    shape: Shape, sets: Sequence[Sequence[cp.ndarray]], w1: cp.ndarray, w2: cp.ndarray, stream: cp.cuda.Stream
) -> Callable[[int], Any]:
    """run(i): torch._grouped_mm on input set i, over the same memory (DLPack), on our stream.
    Raises if torch has no CUDA or no _grouped_mm."""
    import torch

    if not torch.cuda.is_available() or not hasattr(torch, "_grouped_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no CUDA or no torch._grouped_mm")
    silu = torch.nn.functional.silu

    def tt(a: cp.ndarray) -> Any:
        if a.dtype == BF16:  # should CuPy's DLPack export refuse bf16, go through uint16
            with contextlib.suppress(Exception):
                return torch.from_dlpack(a)
            return torch.from_dlpack(a.view(cp.uint16)).view(torch.bfloat16)
        return torch.from_dlpack(a)

    stream.synchronize()
    k, n_i = shape.k, shape.I
    # _grouped_mm(mat_a [M, K], mat_b [E, K, N], offs=int32 group ends [E]) -> [M, N]. It takes
    # a column-major mat_b as is: w1 [E, 2I, H] -> [E, H, 2I] and w2 [E, H, I] -> [E, I, H].
    b1, b2 = tt(w1).transpose(1, 2), tt(w2).transpose(1, 2)
    experts = torch.arange(shape.E, dtype=torch.int32, device=b1.device)
    tsets = [(tt(x), tt(w).reshape(-1), tt(ids).reshape(-1)) for x, w, ids in sets]
    tstream = torch.cuda.ExternalStream(stream.ptr)

    def run(i: int) -> Any:
        x, w, ids = tsets[i]
        with torch.cuda.stream(tstream):
            sorted_ids, order = torch.sort(ids, stable=True)
            offs = torch.searchsorted(sorted_ids, experts, right=True, out_int32=True)
            token = order // k
            h = torch._grouped_mm(x.index_select(0, token), b1, offs=offs)
            a = (silu(h[:, :n_i].float()) * h[:, n_i:].float()).to(x.dtype)
            y = torch._grouped_mm(a, b2, offs=offs)
            out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            out.index_add_(0, token, y.float() * w[order].unsqueeze(1))
            return out.to(x.dtype)

    return run
