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

    def permutes_x(self, num_tokens: int, top_k: int, num_local_experts: int, inter: int) -> bool:
        """Whether GEMM1 reads x in permuted order (x_perm, kernels.gather_rows) instead of x."""
        return False

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


def _epilogue_args(plan, topk_weights, out, depth: int, n: int) -> tuple:
    """The Hopper kernels' shared parameters from permuted_to_expanded to top_k."""
    return plan.permuted_to_expanded, pointer(topk_weights), out, i32(depth), i32(n), i32(plan.top_k)


def _zero_args(zero) -> tuple:
    """The output GEMM1 clears on the fused path (and its 16-byte vectors), or (NULL, 0)."""
    return pointer(zero), np.int64(0 if zero is None else zero.nbytes // 16)


class Sm90:
    """cuda_src/sm90/grouped_gemm.cuh (modules grouped_gemm_m128.cu, grouped_gemm_m64.cu) and
    swapped.cuh (modules swapped_bf16.cu, swapped_f16.cu): a persistent grid of at most one
    384-thread CTA per SM. Row-major: B (and GEMM2's A) arrive by TMA, GEMM1 gathers x's rows with
    cp.async. Swapped (narrow or wide tiles, modules swapped_{bf16,f16}.cu and
    swapped_wide_{bf16,f16}.cu): both operands arrive by TMA, GEMM1's token rows from x_perm."""

    name = "sm90"
    CLEARS_OUT_IN_GEMM1 = True  # GEMM1's spare producer warps clear the fused path's output
    TILE_M = (64, 128)
    THREADS = 384
    BK = 64
    # (BM, BN) -> STAGES, as in the kernel entries
    STAGES: ClassVar[dict[tuple[int, int], int]] = {
        (128, 256): 4,
        (128, 128): 6,
        (128, 64): 8,
        (64, 256): 5,
        (64, 128): 8,
    }
    STAGING_BYTES = 2 * 64 * (128 + 16)  # Layout::STAGING_*: two warpgroups' 64 padded rows

    # cuda_src/sm90/swapped.cuh: TOKEN_BOX, STAGING_BYTES (the tiles: heuristics.SwappedTiles)
    SWAPPED_TOKEN_BOX = 32
    SWAPPED_STAGING_BYTES = 128 * (32 * 2 + 16)

    def tile_m(self, num_tokens: int, top_k: int, num_local_experts: int) -> int:
        return heuristics.choose_sm90_tile_m(num_tokens, top_k, num_local_experts)

    @staticmethod
    def uses_swapped(num_tokens: int, top_k: int, num_local_experts: int, inter: int) -> bool:
        """Whether the GEMMs of a layer with intermediate size `inter` run the swapped kernels
        (which hold per-expert tables in shared memory: at most SWAPPED_MAX_EXPERTS local
        experts)."""
        return num_local_experts <= heuristics.SWAPPED_MAX_EXPERTS and heuristics.choose_sm90_swapped(
            num_tokens, top_k, num_local_experts, inter
        )

    def swapped(self, plan, inter: int) -> bool:
        return self.uses_swapped(plan.num_tokens, plan.top_k, plan.num_local_experts, inter)

    def permutes_x(self, num_tokens: int, top_k: int, num_local_experts: int, inter: int) -> bool:
        """The swapped GEMM1 loads its token rows by TMA from x in permuted order."""
        return self.uses_swapped(num_tokens, top_k, num_local_experts, inter)

    def tile_widths(self, tile_m: int) -> tuple[int, ...]:
        """The BN of the kernels with `tile_m`-row tiles, widest first."""
        return tuple(sorted((bn for bm, bn in self.STAGES if bm == tile_m), reverse=True))

    def smem_bytes(self, tile_m: int, bn: int) -> int:
        stages = self.STAGES[(tile_m, bn)]
        return stages * (tile_m + bn) * self.BK * 2 + self.STAGING_BYTES + 2 * stages * 8

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
        (swiglu) loads, per tile, BN/2 gate and BN/2 up rows of w for BN/2 outputs, as one box
        of each per warpgroup slice (Split in the kernel: one slice at BM = 128, two at 64)."""
        fn = function(f"sm90_grouped_gemm_m{plan.tile_m}", name)
        out_cols = bn // 2 if swiglu else bn
        box_rows = out_cols // (128 // plan.tile_m) if swiglu else out_cols
        units = plan.max_tiles * cdiv(n, out_cols) * k_splits
        grid = min(units, _device.multiprocessor_count(_device.require_gpu()))
        args = (
            a_arg,
            _tma.tile_desc(w, box_rows),
            pointer(bias),
            plan.tile_expert,
            plan.expert_offsets,
            i32(plan.num_local_experts),
            *_epilogue_args(plan, topk_weights, out, depth, n),
            i32(k_splits),
            *_zero_args(zero),
        )
        launch(fn, (grid,), (self.THREADS,), args, self.smem_bytes(plan.tile_m, bn))

    @staticmethod
    def swapped_tiles(plan) -> heuristics.SwappedTiles:
        return heuristics.choose_sm90_swapped_tiles(plan.num_tokens, plan.top_k, plan.num_local_experts)

    def swapped_smem_bytes(self, tiles: heuristics.SwappedTiles) -> int:
        """swapped::Layout<Tiles>::BYTES: the stages, two warpgroups' staging and chunk rows, the
        expert tables, the barriers."""
        rows, experts = tiles.max_rows, heuristics.SWAPPED_MAX_EXPERTS
        stages = tiles.stages * (tiles.weight_rows + rows) * self.BK * 2
        tables = -(-3 * (experts + 1) * 4 // 8) * 8
        return stages + 2 * self.SWAPPED_STAGING_BYTES + 2 * rows * 8 + tables + 2 * tiles.stages * 8

    def _swapped_launches(self, plan) -> list[tuple[heuristics.SwappedTiles, int]]:
        """(tiles, busiest-expert guard) of each swapped kernel to launch: one unguarded (0), or,
        where the wide tiles hold for balanced routing only, the wide ones while no expert has
        more than the limit's rows and the narrow ones otherwise (cuda_src/sm90/swapped.cuh)."""
        tiles = self.swapped_tiles(plan)
        limit = None
        if tiles == heuristics.SWAPPED_WIDE:
            limit = heuristics.wide_tiles_busiest_limit(plan.num_tokens, plan.top_k, plan.num_local_experts)
        if limit is None:
            return [(tiles, 0)]
        return [(heuristics.SWAPPED_WIDE, limit), (heuristics.SWAPPED_NARROW, -limit)]

    def _launch_swapped(
        self,
        kernel: str,
        swiglu: bool,
        w,
        tokens,
        bias,
        plan,
        topk_weights,
        out,
        depth: int,
        n: int,
        zero=None,
    ) -> None:
        """cuda_src/sm90/swapped.cuh: `kernel` is the entry's name after its module prefix; `w` is
        w1 (gate/up groups, 5-D map) or w2; `tokens` (x_perm or h) is loaded in 32-row boxes. A unit
        is one chunk of an expert's rows against one block of weight rows (SwiGLU: half of them
        gate rows, so half as many outputs). One or two launches (_swapped_launches)."""
        tokens_desc = _tma.tile_desc(tokens, self.SWAPPED_TOKEN_BOX)
        sms = _device.multiprocessor_count(_device.require_gpu())
        for tiles, busiest_guard in self._swapped_launches(plan):
            fn = function(f"{tiles.module}_{dtype_tag(tokens.dtype)}", f"{tiles.module}_{kernel}")
            if swiglu:
                w_desc = _tma.gate_up_groups_desc(w, tiles.weight_rows // 2 // _tma.GATE_UP_GROUP)
            else:
                w_desc = _tma.tile_desc(w, tiles.weight_rows)
            block_out = tiles.weight_rows // 2 if swiglu else tiles.weight_rows
            chunks = heuristics.max_expert_chunks(
                plan.num_tokens * plan.top_k, plan.num_local_experts, tiles.max_rows
            )
            units = chunks * cdiv(n, block_out)
            grid = min(units, sms)
            args = (
                w_desc,
                tokens_desc,
                pointer(bias),
                plan.expert_counts,
                plan.expert_offsets,
                i32(plan.num_local_experts),
                *_epilogue_args(plan, topk_weights, out, depth, n),
                *_zero_args(zero),
                i32(busiest_guard),
            )
            launch(fn, (grid,), (self.THREADS,), args, self.swapped_smem_bytes(tiles))

    def _a_desc(self, a, plan) -> object:
        return _tma.tile_desc(a, plan.tile_m)

    def _tiles(self, plan, n: int, depth: int, swiglu: bool, max_splits: int) -> tuple[int, int]:
        sms = _device.multiprocessor_count(_device.require_gpu())
        widths = self.tile_widths(plan.tile_m)
        return heuristics.choose_sm90_tiles(plan.max_tiles, n, depth, sms, swiglu, max_splits, widths)

    def gemm1_swiglu(self, x, w1, b1, plan, h, zero=None, x_perm=None) -> None:
        """h[p] = SwiGLU(x[token(p)] @ w1[e].T + b1[e]): the row-major kernels gather x's rows
        themselves, the swapped ones read `x_perm` (filled by kernels.gather_rows wherever
        `permutes_x`). Also zeroes `zero` if given."""
        inter, hidden = w1.shape[1] // 2, w1.shape[2]
        if self.swapped(plan, inter):
            kernel = f"gemm1_swiglu_{dtype_tag(x.dtype)}"
            self._launch_swapped(kernel, True, w1, x_perm, b1, plan, None, h, hidden, inter, zero)
            return
        bn, _ = self._tiles(plan, inter, hidden, swiglu=True, max_splits=1)
        name = f"sm90_gemm1_swiglu_{dtype_tag(x.dtype)}_m{plan.tile_m}_n{bn}"
        self._launch(name, bn, 1, True, x, w1, b1, plan, None, h, hidden, inter, zero)

    def gemm2_store(self, a, w2, b2, plan, y) -> None:
        n, depth = w2.shape[1], w2.shape[2]
        if self.swapped(plan, depth):
            self._launch_swapped(
                f"gemm2_store_{dtype_tag(a.dtype)}", False, w2, a, b2, plan, None, y, depth, n
            )
            return
        bn, _ = self._tiles(plan, n, depth, swiglu=False, max_splits=1)
        name = f"sm90_gemm2_store_{dtype_tag(a.dtype)}_m{plan.tile_m}_n{bn}"
        self._launch(name, bn, 1, False, self._a_desc(a, plan), w2, b2, plan, None, y, depth, n)

    def gemm2_scatter(self, a, w2, b2, plan, topk_weights, out) -> None:
        n, depth = w2.shape[1], w2.shape[2]
        if self.swapped(plan, depth):
            kernel = f"gemm2_scatter_{dtype_tag(a.dtype)}_out_{dtype_tag(out.dtype)}"
            self._launch_swapped(kernel, False, w2, a, b2, plan, topk_weights, out, depth, n)
            return
        max_splits = heuristics.max_scatter_splits(plan.top_k, out.dtype.itemsize)
        bn, k_splits = self._tiles(plan, n, depth, swiglu=False, max_splits=max_splits)
        name = f"sm90_gemm2_scatter_{dtype_tag(a.dtype)}_m{plan.tile_m}_n{bn}_out_{dtype_tag(out.dtype)}"
        a_desc = self._a_desc(a, plan)
        self._launch(name, bn, k_splits, False, a_desc, w2, b2, plan, topk_weights, out, depth, n)


_BACKENDS = {"sm80": Sm80(), "sm90": Sm90()}


@cache
def _native(capability: tuple[int, int]) -> str:
    return "sm90" if capability == (9, 0) else "sm80"


def for_device(device_id: int):
    """The backend for this device: the native one, or `MOEFUSE_BACKEND` if it can run here."""
    native = _native(_device.compute_capability(device_id))
    requested = os.environ.get(BACKEND_ENV) or native
    if requested not in _BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {sorted(_BACKENDS)}, got {requested!r}")
    if requested == "sm90" and native != "sm90":
        raise ValueError(f"{BACKEND_ENV}=sm90 needs a compute capability 9.0 GPU")
    return _BACKENDS[requested]
