"""The grouped-GEMM backends and the forward configuration they choose.

`Sm80` runs the portable mma.sync kernels (any GPU of compute capability 8.0+); `Sm90` the
Hopper wgmma + TMA kernels (compute capability 9.0), in two families: row-major tiles, and
swapped operands (weights on the MMA's M side) in a narrow and a wide tile geometry.

A backend's `configure` makes every kernel choice of one call kind at once (heuristics, then
`moefuse.override`): the plan's M tile, whether GEMM1 reads x in permuted order, and each GEMM's
launches (kernel, grid, splits, guards). The layer keeps that `ForwardConfig` with the call
kind's workspace, and every launch of the forward follows it: nothing is chosen twice. Kernels
are found by their published tags and sized by their published numbers (moefuse/_spec.py).
`for_device` picks the best backend the GPU has; `MOEFUSE_BACKEND=sm80|sm90` forces one.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from . import _device, _tma, heuristics, kernels, overrides
from ._validate import STANDARD_LAYOUT, WeightLayout
from .kernels import Launch, cdiv, kernel
from .plan import plan_capacity

BACKEND_ENV = "MOEFUSE_BACKEND"
GEOMETRIES = ("narrow", "wide")  # the swapped kernels' tile geometries


@dataclass(frozen=True)
class CallKind:
    """What a forward's kernel choice depends on."""

    num_tokens: int
    top_k: int
    num_local_experts: int
    hidden: int  # H: GEMM1's K, GEMM2's N
    inter: int  # I: GEMM1's N, GEMM2's K
    elem: str  # bf16 or f16
    out: str  # the fused output's element type: elem or f32
    fused: bool  # GEMM2 reduces into the output (else it stores rows for the finalize)
    layout: WeightLayout = STANDARD_LAYOUT  # as the backend reads the weights (Backend.reads)
    weights: str | None = None  # the weights' element type when it is not `elem`: e4m3 (D30)

    @property
    def kernel_elem(self) -> str:
        """The GEMM kernels' element tag: the weights' (e4m3, with x and h quantised), else x's."""
        return self.weights or self.elem

    @property
    def h_elem(self) -> str:
        """GEMM1's output (h) element tag: e4m3 on fp8 weights (quantised per 64 of I), else x's."""
        return self.weights or self.elem


@dataclass(frozen=True)
class ForwardConfig:
    """Every kernel choice of one call kind."""

    fused: bool  # GEMM2 reduces into the output
    tile_m: int  # the plan's padding unit (and the row-major kernels' M tile)
    permutes_x: bool  # GEMM1 reads x in permuted order, which a gather pass writes first
    clears_out: bool  # GEMM1 zeroes the fused output (else a memset does)
    gemm1: tuple[Launch, ...]
    gemm2: tuple[Launch, ...]


@dataclass(frozen=True)
class GemmArrays:
    """One GEMM's arrays in one call."""

    a: object  # x (gathered by the kernel), x_perm or h
    w: object
    bias: object
    plan: object
    out: object
    topk_weights: object = None
    zero: object = None  # cleared by GEMM1 on the way
    layout: WeightLayout = STANDARD_LAYOUT  # of `w`
    gate: Mapping[str, object] = field(default_factory=dict)  # a gated GEMM1's activation arguments
    # fp8 (D30): fp32 scales of `a` (GEMM1: x_s [T, groups of H]; GEMM2: h_s [groups of I, rows]),
    # of `w` ([E, row blocks, K blocks], per tensor [E, 1, 1]), and GEMM1's h_s, which it writes.
    a_scale: object = None
    w_scale: object = None
    h_scale: object = None


class _Backend:
    """What both backends share: the kernel queries a call kind may make, the M tiles of their
    row-major kernels, and the plan's tile_m."""

    name = ""
    fp8 = False  # whether the backend has kernels for fp8 (e4m3) weights

    def reads(self, layout: WeightLayout) -> WeightLayout:
        """The layout the backend's kernels read weights stored in `layout` in: the same, or
        (transposed weights on a backend that cannot read them in place) the layer's copy's."""
        return layout

    def queries(self, kind: CallKind) -> list[dict[str, str]]:
        """Kernel queries that read every module a call of this kind may use, at any T: each GEMM
        in each family that may run its weights (`families`: their tags, the row-major one first)."""
        op2, out2 = _gemm2_op(kind)
        gemms = (dict(op=_gemm1_op(kind.layout), out=kind.h_elem), dict(op=op2, out=out2))
        families = self.families(kind.layout)
        if kind.weights:  # fp8: the row-major family alone (no swapped fp8 kernels yet, D30)
            families = families[:1]
        queries = [{**tags, **gemm, "elem": kind.kernel_elem} for tags in families for gemm in gemms]
        if kind.weights:  # and the pass that quantises x (either group: one module)
            queries.append(dict(op="quantize_rows", elem=kind.elem))
        return queries

    def tile_ms(self, layout: WeightLayout = STANDARD_LAYOUT, elem: str = "bf16") -> tuple[int, int]:
        """(small, large) M tiles of the backend's row-major kernels for weights stored in
        `layout` with elements `elem`."""
        found = sorted({s["tile_m"] for s in kernels.select(**self.families(layout)[0], elem=elem)})
        return found[0], found[-1]

    def tile_m(
        self,
        num_tokens: int,
        top_k: int,
        num_local_experts: int,
        layout: WeightLayout = STANDARD_LAYOUT,
        elem: str = "bf16",
    ) -> int:
        tile_ms, forced = self.tile_ms(layout, elem), overrides.current().tile_m
        if forced is None:
            return self.choose_tile_m(num_tokens, top_k, num_local_experts, tile_ms)
        if forced not in tile_ms:
            raise ValueError(f"tile_m must be one of {tile_ms} or None, got {forced}")
        return forced

    def configure(self, kind: CallKind, tile_m: int | None = None) -> ForwardConfig:
        """Every kernel choice of a call kind (memoized: a configuration is immutable)."""
        device_id = _device.require_gpu()
        key = (self.name, kind, tile_m, overrides.current(), device_id)
        config = _configs.get(key)
        if config is None:
            if len(_configs) >= MAX_CONFIGS:
                _configs.clear()
            kernels.prepare(*self.queries(kind))  # one compile pass for every T of this kind's weights
            tile_m = tile_m or self.tile_m(
                kind.num_tokens, kind.top_k, kind.num_local_experts, kind.layout, kind.kernel_elem
            )
            config = _configs[key] = self._configure(kind, tile_m)
        return config


MAX_CONFIGS = 4096  # call kinds whose configuration is kept (fused_moe builds a layer per call)
_configs: dict[tuple, ForwardConfig] = {}


def _fixed(kind: CallKind, k: int, n: int, **more) -> dict:
    """The Hopper kernels' arguments that a configuration fixes."""
    return dict(num_local_experts=kind.num_local_experts, K=k, N=n, top_k=kind.top_k, **more)


def _gemm2_op(kind: CallKind) -> tuple[str, str]:
    return ("gemm2_scatter", kind.out) if kind.fused else ("gemm2_store", kind.elem)


def _w_tag(layout: WeightLayout) -> str:
    """The kernels' tag of the weights' major order as stored: k ([E, N, K]) or mn ([E, K, N])."""
    return "mn" if layout.transposed else "k"


def _gemm1_op(layout: WeightLayout) -> str:
    """Gated weights stored [K, 2I] interleaved pair gate and up in adjacent columns, which no TMA
    map splits into halves: their kernel pairs them in the accumulators."""
    if not layout.gated:
        return "gemm1_relu2"
    return "gemm1_gated_pairs" if layout.transposed and layout.interleaved else "gemm1_gated"


def _swaps(layout: WeightLayout) -> bool:
    """Whether the swapped kernels read weights stored in `layout`: gated ones, K-major (either
    gate/up order), or transposed with gate and up interleaved (gpt-oss), whose pairs they finish
    after a shuffle (cuda_src/sm90/swapped.cuh)."""
    return layout.gated and (not layout.transposed or layout.interleaved)


def gate_args(layout: WeightLayout, activation, inter: int) -> dict[str, object]:
    """A gated GEMM1's activation arguments, and where gate j's and up j's bias (and, on the
    portable kernels, weight rows) sit: j * gate_up_step and that + up_offset."""
    if not layout.gated:
        return {}
    step, up_offset = (2, 1) if layout.interleaved else (1, inter)
    return dict(activation.kernel_args(), gate_up_step=step, up_offset=up_offset)


class Sm80(_Backend):
    """cuda_src/sm80/grouped_gemm.cu: a grid of (M tiles, N tiles); GEMM1 gathers x rows itself."""

    name = "sm80"
    choose_tile_m = staticmethod(heuristics.choose_tile_m)

    def reads(self, layout: WeightLayout) -> WeightLayout:
        """mma.sync's fragments load K-major rows: transposed weights are copied once (the layer
        keeps the copy)."""
        return replace(layout, transposed=False)

    def families(self, layout: WeightLayout) -> list[dict[str, str]]:
        """One family runs every layout (in the layout it `reads`)."""
        return [dict(family="sm80")]

    def _launch(self, kind: CallKind, tile_m: int, op: str, out: str, k: int, n: int) -> Launch:
        spec = kernel(family="sm80", op=op, elem=kind.elem, out=out, tile_m=tile_m)
        max_tiles = plan_capacity(kind.num_tokens, kind.top_k, kind.num_local_experts, tile_m).tiles
        return Launch(spec, (max_tiles, cdiv(n, spec["out_cols"])), {"K": k, "N": n, "top_k": kind.top_k})

    def _configure(self, kind: CallKind, tile_m: int) -> ForwardConfig:
        op2, out2 = _gemm2_op(kind)
        gemm1 = self._launch(kind, tile_m, _gemm1_op(kind.layout), kind.elem, kind.hidden, kind.inter)
        gemm2 = self._launch(kind, tile_m, op2, out2, kind.inter, kind.hidden)
        return ForwardConfig(kind.fused, tile_m, False, False, (gemm1,), (gemm2,))

    @staticmethod
    def arrays(spec, g: GemmArrays, tma=_tma) -> dict:
        """The array arguments of a launch of `spec` (the configuration fixes the rest)."""
        args = dict(a=g.a, w=g.w, bias=g.bias, topk_weights=g.topk_weights, out=g.out, **g.gate)
        return dict(args, tile_expert=g.plan.tile_expert, permuted_to_expanded=g.plan.permuted_to_expanded)


class Sm90(_Backend):
    """cuda_src/sm90/: a persistent grid of at most one CTA per SM. Row-major: B (and GEMM2's A)
    arrive by TMA, GEMM1 gathers x's rows with cp.async. Swapped: both operands arrive by TMA,
    GEMM1's token rows from x_perm."""

    name = "sm90"
    fp8 = True
    choose_tile_m = staticmethod(heuristics.choose_sm90_tile_m)

    def families(self, layout: WeightLayout) -> list[dict[str, str]]:
        """Row-major tiles for the weights' major order, and both swapped geometries where they
        read the layout."""
        w = _w_tag(layout)
        swapped = [dict(family="swapped", geometry=g, w=w) for g in GEOMETRIES] if _swaps(layout) else []
        return [dict(family="rows", w=w), *swapped]

    @staticmethod
    def _swapped_geometries(kind: CallKind) -> list[tuple[str, int]]:
        """heuristics.swapped_launches with the swapped kernels' published numbers, where they
        read the weights' layout (`_swaps`)."""
        if kind.weights or not _swaps(kind.layout):  # no swapped fp8 kernels yet (D30)
            return []
        narrow, wide = (
            kernel(family="swapped", geometry=g, op="gemm2_store", elem=kind.elem, w=_w_tag(kind.layout))
            for g in GEOMETRIES
        )
        numbers = dict(
            max_experts=narrow["max_experts"], narrow_rows=narrow["max_rows"], wide_rows=wide["max_rows"]
        )
        forced = overrides.current()
        rows = (kind.num_tokens, kind.top_k, kind.num_local_experts, kind.inter)
        return heuristics.swapped_launches(*rows, numbers, forced.family, forced.busiest_limit)

    @staticmethod
    def _swapped(kind: CallKind, geometry: str, guard: int, op: str, out: str, k: int, n: int) -> Launch:
        """A unit is one chunk of an expert's rows against one block of weight rows."""
        tags = dict(family="swapped", geometry=geometry, op=op, elem=kind.elem, out=out)
        spec = kernel(**tags, w=_w_tag(kind.layout))
        pairs = kind.num_tokens * kind.top_k
        chunks = heuristics.max_expert_chunks(pairs, kind.num_local_experts, spec["max_rows"])
        units = chunks * cdiv(n, spec["block_out"])
        return Launch(spec, (min(units, _sms()),), _fixed(kind, k, n, busiest_guard=guard))

    @staticmethod
    def _rows(kind: CallKind, tile_m: int, op: str, out: str, k: int, n: int, max_splits) -> Launch:
        tags = {
            "family": "rows",
            "op": op,
            "elem": kind.kernel_elem,
            "out": out,
            "tile_m": tile_m,
            "w": _w_tag(kind.layout),
        }
        forced_n = overrides.current().tile_n
        if forced_n is not None:
            tags["tile_n"] = forced_n
        specs = sorted(kernels.select(**tags), key=lambda s: s["out_cols"], reverse=True)
        if not specs:
            raise ValueError(f"no Hopper row-major kernel has {tags}")
        max_tiles = plan_capacity(kind.num_tokens, kind.top_k, kind.num_local_experts, tile_m).tiles
        widths = tuple(s["out_cols"] for s in specs)
        cols, splits = heuristics.choose_sm90_tiles(
            max_tiles, n, k, _sms(), max_splits, widths, specs[0]["tile_k"]
        )
        spec = specs[widths.index(cols)]
        return Launch(
            spec, (min(max_tiles * cdiv(n, cols) * splits, _sms()),), _fixed(kind, k, n, k_splits=splits)
        )

    def _configure(self, kind: CallKind, tile_m: int) -> ForwardConfig:
        op1, (op2, out2) = _gemm1_op(kind.layout), _gemm2_op(kind)
        swapped = self._swapped_geometries(kind)
        if swapped:
            ops = ((op1, kind.elem, kind.hidden, kind.inter), (op2, out2, kind.inter, kind.hidden))
            gemm1, gemm2 = (tuple(self._swapped(kind, g, guard, *op) for g, guard in swapped) for op in ops)
        else:
            gemm1 = (self._rows(kind, tile_m, op1, kind.h_elem, kind.hidden, kind.inter, 1),)
            out_bytes = 4 if kind.out == "f32" else 2
            splits = heuristics.max_scatter_splits(kind.top_k, out_bytes) if kind.fused else 1
            gemm2 = (self._rows(kind, tile_m, op2, out2, kind.inter, kind.hidden, splits),)
        return ForwardConfig(kind.fused, tile_m, bool(swapped), kind.fused, gemm1, gemm2)

    @staticmethod
    def arrays(spec, g: GemmArrays, tma=_tma) -> dict:
        """The array arguments of a launch of `spec` (the configuration fixes the rest): TMA
        descriptors with the boxes the kernel publishes, the plan's arrays, the output."""
        plan, tile_k = g.plan, spec["tile_k"]
        gemm1 = spec.tags["op"].startswith("gemm1")
        args = dict(
            **g.gate,
            bias=g.bias,
            expert_offsets=plan.expert_offsets,
            permuted_to_expanded=plan.permuted_to_expanded,
            topk_weights=g.topk_weights,
            out=g.out,
            zero=g.zero,
            zero_bytes=0 if g.zero is None else g.zero.nbytes,
        )
        if spec.tags["family"] == "swapped":
            if spec.tags["w"] == "mn":
                w_desc = tma.weights_desc(g.w, spec["w_box_rows"], tile_k, False, g.layout)
            elif gemm1:
                w_desc = tma.gate_up_groups_desc(
                    g.w, spec["w_box_groups"], spec["gate_up_group"], tile_k, g.layout.interleaved
                )
            else:
                w_desc = tma.tile_desc(g.w, spec["w_box_rows"], tile_k)
            tokens_desc = tma.tile_desc(g.a, spec["token_box"], tile_k)
            return dict(args, w_desc=w_desc, tokens_desc=tokens_desc, expert_counts=plan.expert_counts)
        a = {"x": g.a} if gemm1 else {"a_desc": tma.tile_desc(g.a, spec["a_box_rows"], tile_k)}
        halves = spec.tags["op"] == "gemm1_gated"
        b_desc = tma.weights_desc(g.w, spec["b_box_rows"], tile_k, halves, g.layout)
        args = dict(args, **a, b_desc=b_desc, tile_expert=plan.tile_expert)
        if spec.tags["elem"] == "e4m3":
            args.update(_fp8_scales(spec, g, gemm1, tma))
        return args


def _elements(array, axis: int) -> int:
    """The element stride of `array` along `axis`, 0 where it has one entry (a per-tensor scale's
    block axes, a per-token x_s's K axis): the kernels then read the same scale throughout."""
    return 0 if array.shape[axis] == 1 else array.strides[axis] // array.itemsize


def _fp8_scales(spec, g: GemmArrays, gemm1: bool, tma) -> dict:
    """An fp8 kernel's scale arguments (cuda_src/sm90/grouped_gemm_fp8.cuh, Fp8Args): the weights'
    by strides, GEMM1's x_s by strides and the h_s it writes; GEMM2's h_s by a TMA map of the
    tile's rows x the K block's groups the kernel publishes."""
    w_scale = g.w_scale
    args = dict(
        w_scale=w_scale,
        w_scale_expert=_elements(w_scale, 0),
        w_scale_rows=_elements(w_scale, 1),
        w_scale_k=_elements(w_scale, 2),
    )
    if gemm1:
        x_scale, h_scale = g.a_scale, g.h_scale
        args.update(x_scale=x_scale, x_scale_row=_elements(x_scale, 0), x_scale_k=_elements(x_scale, 1))
        return dict(args, h_scale=h_scale, h_scale_rows=h_scale.strides[0] // h_scale.itemsize)
    return dict(args, a_scale_desc=tma.scale_desc(g.a_scale, spec["tile_m"], spec["scale_groups"]))


def run(launches: tuple[Launch, ...], g: GemmArrays) -> None:
    """Launch one GEMM of a forward configuration (one launch, or two guarded ones)."""
    for launch in launches:
        launch(**_BACKENDS[launch.spec.tags["family"]].arrays(launch.spec, g))


def _sms() -> int:
    return _device.multiprocessor_count(_device.require_gpu())


_BACKENDS = {"sm80": Sm80(), "sm90": Sm90()}
_BACKENDS.update(rows=_BACKENDS["sm90"], swapped=_BACKENDS["sm90"])  # kernel family -> backend


def for_device(device_id: int):
    """The backend for this device: the native one, or one that `moefuse.override(backend=)` or
    `MOEFUSE_BACKEND` names, if it can run here."""
    native = "sm90" if _device.compute_capability(device_id) == (9, 0) else "sm80"
    requested = overrides.current().backend or os.environ.get(BACKEND_ENV) or native
    if requested not in overrides.BACKENDS:
        raise ValueError(f"{BACKEND_ENV} must be one of {overrides.BACKENDS}, got {requested!r}")
    if requested == "sm90" and native != "sm90":
        raise ValueError(f"the sm90 backend ({BACKEND_ENV}=sm90) needs a compute capability 9.0 GPU")
    return _BACKENDS[requested]
