"""The grouped-GEMM backends, one per kernel family, behind one interface.

`Sm80` runs the portable mma.sync kernels (any GPU of compute capability 8.0+); `Sm90` the
Hopper wgmma + TMA kernels (compute capability 9.0). `for_device` picks the best the GPU has;
`MOEFUSE_BACKEND=sm80|sm90` forces one (tests use it to run both on a Hopper GPU).
"""

from __future__ import annotations

import os
from functools import cache
from typing import ClassVar

import numpy as np

from . import _device, _tma, heuristics
from .kernels import cdiv, dtype_tag, function, i32, launch, pointer

BACKEND_ENV = "MOEFUSE_BACKEND"


class Sm80:
    """cuda_src/sm80/grouped_gemm.cu: grid (max_tiles, n_tiles) of 256 threads; GEMM1 gathers x
    rows itself."""

    name = "sm80"
    CLEARS_OUT_IN_GEMM1 = False  # the fused path's output needs a memset
    TILE_M = (64, 128)
    THREADS = 256
    BN = 128
    BK = 32
    STAGES = 4
    SMEM_ROW = BK + 8

    def tile_m(self, num_tokens: int, top_k: int, num_local_experts: int) -> int:
        return heuristics.choose_tile_m(num_tokens, top_k, num_local_experts)

    def smem_bytes(self, tile_m: int) -> int:
        return self.STAGES * (tile_m + self.BN) * self.SMEM_ROW * 2

    def _launch(self, name: str, plan, n_tiles: int, args: tuple) -> None:
        fn = function("sm80_grouped_gemm", name)
        launch(fn, (plan.max_tiles, n_tiles), (self.THREADS,), args, self.smem_bytes(plan.tile_m))

    def _args(self, a, w, bias, plan, topk_weights, out, depth: int, n: int) -> tuple:
        return (
            a,
            w,
            pointer(bias),
            plan.tile_expert,
            plan.permuted_to_expanded,
            pointer(topk_weights),
            out,
            i32(depth),
            i32(n),
            i32(plan.top_k),
        )

    def gemm1_swiglu(self, x, w1, b1, plan, h) -> None:
        """h[p] = SwiGLU(x[token(p)] @ w1[e].T + b1[e]); the kernel gathers x's rows itself."""
        inter, hidden = w1.shape[1] // 2, w1.shape[2]
        name = f"gemm1_swiglu_{dtype_tag(x.dtype)}_m{plan.tile_m}"
        self._launch(
            name, plan, cdiv(inter, self.BN // 2), self._args(x, w1, b1, plan, None, h, hidden, inter)
        )

    def gemm2_store(self, a, w2, b2, plan, y) -> None:
        n, depth = w2.shape[1], w2.shape[2]
        name = f"gemm2_store_{dtype_tag(a.dtype)}_m{plan.tile_m}"
        self._launch(name, plan, cdiv(n, self.BN), self._args(a, w2, b2, plan, None, y, depth, n))

    def gemm2_scatter(self, a, w2, b2, plan, topk_weights, out) -> None:
        n, depth = w2.shape[1], w2.shape[2]
        name = f"gemm2_scatter_{dtype_tag(a.dtype)}_m{plan.tile_m}_out_{dtype_tag(out.dtype)}"
        self._launch(name, plan, cdiv(n, self.BN), self._args(a, w2, b2, plan, topk_weights, out, depth, n))


class Sm90:
    """cuda_src/sm90/grouped_gemm.cu: a persistent grid of at most one 384-thread CTA per SM; B
    (and GEMM2's A) arrive by TMA, GEMM1 gathers x's rows with cp.async."""

    name = "sm90"
    CLEARS_OUT_IN_GEMM1 = True  # GEMM1's spare producer warps clear the fused path's output
    TILE_M = (128,)
    THREADS = 384
    BM = 128
    BK = 64
    STAGES: ClassVar[dict[int, int]] = {64: 8, 128: 6, 256: 4}  # per BN, as in the kernel entries
    STAGING_BYTES = 2 * 64 * (128 + 16)  # Layout::STAGING_*: two warpgroups' 64 padded rows

    def tile_m(self, num_tokens: int, top_k: int, num_local_experts: int) -> int:
        return self.BM

    def smem_bytes(self, bn: int) -> int:
        stages = self.STAGES[bn]
        return stages * (self.BM + bn) * self.BK * 2 + self.STAGING_BYTES + 2 * stages * 8

    def _launch(
        self,
        name: str,
        bn: int,
        k_splits: int,
        swiglu: bool,
        a_arg,
        w,
        bias,
        plan,
        topk_weights,
        out,
        depth: int,
        n: int,
        zero=None,
    ) -> None:
        """`a_arg`: x itself (GEMM1 gathers its rows) or A's TMA descriptor (GEMM2). GEMM1
        (swiglu) loads, per tile, BN/2 gate and BN/2 up rows of w (two boxes) for BN/2 outputs."""
        fn = function("sm90_grouped_gemm", name)
        out_cols = bn // 2 if swiglu else bn
        units = plan.max_tiles * cdiv(n, out_cols) * k_splits
        grid = min(units, _device.multiprocessor_count(_device.require_gpu()))
        args = (
            a_arg,
            _tma.tile_desc(w, out_cols),
            pointer(bias),
            plan.tile_expert,
            plan.expert_offsets,
            i32(plan.num_local_experts),
            plan.permuted_to_expanded,
            pointer(topk_weights),
            out,
            i32(depth),
            i32(n),
            i32(plan.top_k),
            i32(k_splits),
            pointer(zero),
            np.int64(0 if zero is None else zero.nbytes // 16),
        )
        launch(fn, (grid,), (self.THREADS,), args, self.smem_bytes(bn))

    def _a_desc(self, a) -> object:
        return _tma.tile_desc(a, self.BM)

    def _tiles(self, plan, n: int, depth: int, swiglu: bool, can_split: bool) -> tuple[int, int]:
        sms = _device.multiprocessor_count(_device.require_gpu())
        return heuristics.choose_sm90_tiles(plan.max_tiles, n, depth, sms, swiglu, can_split)

    def gemm1_swiglu(self, x, w1, b1, plan, h, zero=None) -> None:
        """h[p] = SwiGLU(x[token(p)] @ w1[e].T + b1[e]), the kernel gathering x's rows; also
        zeroes `zero` if given."""
        inter, hidden = w1.shape[1] // 2, w1.shape[2]
        bn, _ = self._tiles(plan, inter, hidden, swiglu=True, can_split=False)
        name = f"sm90_gemm1_swiglu_{dtype_tag(x.dtype)}_n{bn}"
        self._launch(name, bn, 1, True, x, w1, b1, plan, None, h, hidden, inter, zero)

    def gemm2_store(self, a, w2, b2, plan, y) -> None:
        n, depth = w2.shape[1], w2.shape[2]
        bn, _ = self._tiles(plan, n, depth, swiglu=False, can_split=False)
        name = f"sm90_gemm2_store_{dtype_tag(a.dtype)}_n{bn}"
        self._launch(name, bn, 1, False, self._a_desc(a), w2, b2, plan, None, y, depth, n)

    def gemm2_scatter(self, a, w2, b2, plan, topk_weights, out) -> None:
        n, depth = w2.shape[1], w2.shape[2]
        bn, k_splits = self._tiles(plan, n, depth, swiglu=False, can_split=True)
        name = f"sm90_gemm2_scatter_{dtype_tag(a.dtype)}_n{bn}_out_{dtype_tag(out.dtype)}"
        self._launch(name, bn, k_splits, False, self._a_desc(a), w2, b2, plan, topk_weights, out, depth, n)


_BACKENDS = {"sm80": Sm80(), "sm90": Sm90()}


@cache
def _native(capability: tuple[int, int]) -> str:
    return "sm90" if capability == (9, 0) else "sm80"


def for_plan(plan):
    """The backend that runs GEMMs over `plan`: the device's, unless the plan's M tile needs
    the portable kernels (the Hopper kernels use 128-row tiles only)."""
    backend = for_device(_device.require_gpu())
    return backend if plan.tile_m in backend.TILE_M else _BACKENDS["sm80"]


def for_device(device_id: int):
    """The backend for this device: the native one, or `MOEFUSE_BACKEND` if it can run here."""
    native = _native(_device.compute_capability(device_id))
    requested = os.environ.get(BACKEND_ENV) or native
    if requested not in _BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {sorted(_BACKENDS)}, got {requested!r}")
    if requested == "sm90" and native != "sm90":
        raise ValueError(f"{BACKEND_ENV}=sm90 needs a compute capability 9.0 GPU")
    return _BACKENDS[requested]
