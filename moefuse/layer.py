"""MoELayer: prepared expert weights plus a reusable workspace."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np

from . import _capture, _debug, _validate, backends, fp8, kernels, overrides
from ._aliasing import byte_spans, check_device, check_disjoint
from ._arrays import (
    ACTIVATION_DTYPES,
    BFLOAT16,
    FLOAT32,
    UINT8,
    as_device_array,
    contiguous,
    device_buffer,
    optional_device_array,
    require_aligned,
)
from ._device import require_gpu, stream_ptr
from ._interop import like_input
from ._validate import ExpertDims, WeightLayout
from .activation import Activation, as_activation
from .backends import CallKind, ForwardConfig, GemmArrays, gate_args, run
from .kernels import cdiv
from .plan import RoutingPlan, launch_plan, plan_capacity, plan_from_arrays, plan_specs
from .workspace import ArraySpec, Workspace, layout_bytes

DISABLE_FUSED_FINALIZE_ENV = "MOEFUSE_DISABLE_FUSED_FINALIZE"
MAX_CARVED = 64  # call kinds whose configuration and workspace layout a layer keeps


def fused_finalize_enabled(requested: bool | None) -> bool:
    """`MOEFUSE_DISABLE_FUSED_FINALIZE=1` forces the deterministic path for every call."""
    if os.environ.get(DISABLE_FUSED_FINALIZE_ENV, "0") not in ("", "0"):
        return False
    return True if requested is None else bool(requested)


@dataclass(frozen=True)
class _Carved:
    """A call kind's forward configuration, workspace arrays and the routing plan over them
    (valid while its workspace keeps the buffer they were carved from)."""

    workspace: Workspace
    generation: int
    config: ForwardConfig
    arrays: dict
    routing: RoutingPlan


def configure(
    backend, dims: ExpertDims, num_tokens: int, top_k: int, fused: bool, out_dtype
) -> ForwardConfig:
    kind = CallKind(
        num_tokens=num_tokens,
        top_k=top_k,
        num_local_experts=dims.num_local_experts,
        hidden=dims.hidden,
        inter=dims.intermediate,
        elem=kernels.dtype_tag(dims.dtype),
        out=kernels.dtype_tag(out_dtype),
        fused=fused,
        layout=backend.reads(dims.layout),
        weights=None if dims.fp8 is None else "e4m3",
    )
    return backend.configure(kind)


def is_fp8(w1, w1_scale=None, w2_scale=None) -> bool:
    """Whether a layer's weights are fp8: a scale is given, or w1 is float8 (or uint8 bits). Then
    the fp8 checks name whatever is missing or wrong (weights without scales, scales without fp8
    weights)."""
    dtype_name = str(getattr(w1, "dtype", "")).rpartition(".")[2]
    fp8_dtype = dtype_name.startswith("float8") or dtype_name == "uint8"
    return w1_scale is not None or w2_scale is not None or fp8_dtype


def fp8_weights(w1, w2, b1, b2, w1_scale, w2_scale, layout: WeightLayout, x=None) -> tuple:
    """fp8 weights and scales as device arrays (float8 as uint8 bits), checked:
    `(ExpertDims, w1, w2, w1_scale, w2_scale)`, the dims' dtype (the activations', x's at a call)
    standing in as bf16: the workspace sizes are the same for fp16. Hopper's fp8 kernels read
    K-major gated weights: transposed ones and relu2 are refused for now (D30)."""
    if not layout.gated:
        raise ValueError(
            "activation: fp8 weights need a gated activation (swiglu, gpt_oss, gelu_tanh); the fp8 "
            "kernels have no relu2 GEMM1 yet"
        )
    if layout.transposed:
        raise ValueError(
            "transposed=True: fp8 weights must be K-major (w1 [E, 2I, H], w2 [E, H, I]) for now; "
            "transpose them (and their scales' last two axes) before building the layer"
        )
    w1, w2 = fp8.as_e4m3_device_array(w1, "w1"), fp8.as_e4m3_device_array(w2, "w2")
    s1, s2 = optional_device_array(w1_scale, "w1_scale"), optional_device_array(w2_scale, "w2_scale")
    found = _validate.check_fp8_weights(w1, w2, s1, s2, b1, b2, x=x, layout=layout)
    sizes = (found.num_local_experts, found.hidden, found.intermediate)
    dims = ExpertDims(*sizes, BFLOAT16, layout, found.format)
    return dims, w1, w2, s1, s2


def expert_weights(w1, w2, b1, b2, w1_scale, w2_scale, layout: WeightLayout, x=None) -> tuple:
    """A layer's weights as device arrays, checked (with `x`: against it, each weight unlike it
    named): `(ExpertDims, w1, w2, w1_scale, w2_scale)`, by `fp8_weights` where `is_fp8`, else by
    `check_expert_weights` with no scales."""
    if is_fp8(w1, w1_scale, w2_scale):
        return fp8_weights(w1, w2, b1, b2, w1_scale, w2_scale, layout, x=x)
    w1, w2 = as_device_array(w1, "w1"), as_device_array(w2, "w2")
    return _validate.check_expert_weights(w1, w2, b1, b2, x=x, layout=layout), w1, w2, None, None


def require_fp8_backend(backend, dims: ExpertDims) -> None:
    """fp8 weights run on the Hopper kernels only (no dequantised fallback yet)."""
    if dims.fp8 is not None and not backend.fp8:
        raise ValueError(
            f"w1: fp8 weights need Hopper (sm_90a, the sm90 backend) for now; this call would run "
            f"the {backend.name} kernels, which read bf16/fp16 weights only (dequantise the "
            "weights with moefuse.fp8.dequantize_weights to run them there)"
        )


def _x_scale_group(dims: ExpertDims, config: ForwardConfig) -> int:
    """Values of x per scale: GEMM1's published A-scale group (block format) or the whole row."""
    return config.gemm1[0].spec["a_scale_group"] if dims.fp8.kind == "block" else dims.hidden


def workspace_specs(dims: ExpertDims, num_tokens: int, top_k: int, config: ForwardConfig) -> list[ArraySpec]:
    """The plan, h, x in permuted order where GEMM1 reads it so, GEMM2's rows on the
    deterministic path, and fp32 router weights (used when the caller's are not). fp8 weights
    (D30): x quantised (x_q e4m3 bits, x_s per group of H), h as e4m3 bits and h_s per group of I
    (GEMM2's published A-scale group) by permuted row, MN-major for its TMA map."""
    num_local = dims.num_local_experts
    specs = plan_specs(num_tokens, top_k, num_local, config.tile_m)
    rows = plan_capacity(num_tokens, top_k, num_local, config.tile_m).rows
    if dims.fp8 is None:
        specs.append(ArraySpec("h", (rows, dims.intermediate), dims.dtype))
    else:
        x_groups = cdiv(dims.hidden, _x_scale_group(dims, config))
        h_groups = cdiv(dims.intermediate, config.gemm2[0].spec["a_scale_group"])
        specs += [
            ArraySpec("x_q", (num_tokens, dims.hidden), UINT8),
            ArraySpec("x_s", (num_tokens, x_groups), FLOAT32),
            ArraySpec("h", (rows, dims.intermediate), UINT8),
            ArraySpec("h_s", (h_groups, rows), FLOAT32),
        ]
    if config.permutes_x:
        specs.append(ArraySpec("x_perm", (rows, dims.hidden), dims.dtype))
    if not config.fused:
        specs.append(ArraySpec("y", (rows, dims.hidden), dims.dtype))
    specs.append(ArraySpec("topk_weights", (num_tokens, top_k), FLOAT32))
    return specs


def workspace_bytes(
    dims: ExpertDims, num_tokens: int, top_k: int, fused_finalize: bool | None, out_dtype
) -> int:
    """Device bytes that serve any call of up to `num_tokens` tokens with `top_k` slots, this
    finalize path and output dtype on the current GPU (and kernel choice: `moefuse.override`).

    Every array of the layout grows with T except x in permuted order, which the Hopper swapped
    family alone reads, over one interval of T (docs/DESIGN.md D6): outside it the rows family's
    layout may be smaller at a larger T. So the largest layout up to T is at T, at the interval's
    last T up to T, or just before the interval starts."""
    if _validate.check_count(num_tokens, "num_tokens") == 0:
        return 0  # an empty batch launches nothing
    if _validate.check_count(top_k, "top_k") == 0:
        raise ValueError("top_k must be at least 1")
    fused = fused_finalize_enabled(fused_finalize)
    backend = backends.for_device(require_gpu())
    require_fp8_backend(backend, dims)
    if dims.fp8 is not None and out_dtype is not None and np.dtype(out_dtype) in ACTIVATION_DTYPES:
        dims = replace(dims, dtype=np.dtype(out_dtype))  # fp8: x's dtype, told by out_dtype
    out_dtype = _validate.resolve_out_dtype(out_dtype, dims.dtype)

    def config(tokens: int) -> ForwardConfig:
        return configure(backend, dims, tokens, top_k, fused, out_dtype)

    def layout(tokens: int) -> int:
        return layout_bytes(workspace_specs(dims, tokens, top_k, config(tokens)))

    candidates = {num_tokens}
    permuting = _permuting_interval(lambda tokens: config(tokens).permutes_x, num_tokens)
    if permuting is not None:
        first, last = permuting
        candidates |= {last, first - 1} - {0}
    return max(layout(tokens) for tokens in candidates)


def _permuting_interval(permutes, num_tokens: int) -> tuple[int, int] | None:
    """The first and last T in [1, num_tokens] where `permutes(T)`, which holds on one interval of
    T at least an octave wide or unbounded above (D6): found by probing two points per octave
    down from num_tokens, then bisecting each edge."""
    octaves = 2 * num_tokens.bit_length() + 1
    probes = sorted({max(1, round(num_tokens * 2 ** (-j / 2))) for j in range(octaves)}, reverse=True)
    inside = next((tokens for tokens in probes if permutes(tokens)), None)
    if inside is None:
        return None

    def edge(outside: int, within: int) -> int:
        """The last T on `within`'s side of the edge between them."""
        while abs(within - outside) > 1:
            middle = (within + outside) // 2
            within, outside = (middle, outside) if permutes(middle) else (within, middle)
        return within

    return edge(0, inside), edge(num_tokens + 1, inside)


def _float32(array, name: str, capturing: bool):
    """`array` as fp32 and C-contiguous (a copy where needed, refused under capture)."""
    if array is None:
        return None
    if np.dtype(array.dtype) != FLOAT32:
        if capturing:
            _capture.refuse_copy(name, f"is {array.dtype} and the fp8 kernels read float32")
        array = array.astype(FLOAT32)
    return contiguous(array, name, capturing)


class MoELayer:
    """The expert part of one MoE layer, ready to run.

    w1: `[E_local, 2I, H]` gate rows `0..I-1` then up rows `I..2I-1` (nn.Linear layout);
    w2: `[E_local, H, I]`; b1 `[E_local, 2I]`, b2 `[E_local, H]` optional; all bf16 or all fp16.
    `transposed=True`: w1 `[E_local, H, 2I]`, w2 `[E_local, I, H]` (transformers' is_transposed).
    `interleaved=True`: gate j and up j are at 2j and 2j + 1 of w1's 2I axis (gpt-oss); b1 follows
    w1's order. `activation`: "swiglu", "gpt_oss", "gelu_tanh", "relu2" (not gated: w1 holds I
    rows) or a `moefuse.Activation` with a clamp limit (see there).
    fp8 weights (Hopper only, run on H100; docs/DESIGN.md D30): w1, w2 float8_e4m3fn (or
    their bits as uint8; torch float8 tensors too) with float32 `w1_scale`, `w2_scale`, `w = q *
    scale`: per 128 x 128 block of each expert matrix as stored (`[E, ceil(2I/128), ceil(H/128)]`,
    `[E, ceil(H/128), ceil(I/128)]`) or per expert matrix (`[E]` or `[E, 1, 1]`), both the same
    format. x (bf16 or fp16, its dtype is the activations') is quantised per token per 128 of H
    (block) or per token (tensor), h per token per 64 of I. K-major, gated, H % 16 == 0 and
    I % 64 == 0; biases are kept as float32.
    The layer owns experts `[first_expert, first_expert + E_local)` of `num_experts`
    (default: `first_expert + E_local`); pairs routed elsewhere, or to ids < 0, contribute nothing.

    Hopper reads every layout in place. Non-contiguous weights are copied once here, and the
    portable (sm80) kernels read a copy of transposed weights made on their first call. The
    workspace grows to the largest batch seen (or `reserve(max_tokens, top_k)` up front), or is
    the caller's (`workspace=`); then a call allocates nothing when given `out=`. A buffer a
    captured CUDA graph uses is kept for the layer's lifetime, so graphs stay valid when a later
    batch grows the workspace. The layer keeps views of the last caller workspace it was given
    (its carved layouts) until it is given another one or is deleted.
    """

    def __init__(
        self,
        w1,
        w2,
        b1=None,
        b2=None,
        *,
        activation: str | Activation = "swiglu",
        transposed: bool = False,
        interleaved: bool = False,
        first_expert: int = 0,
        num_experts: int | None = None,
        w1_scale=None,
        w2_scale=None,
    ) -> None:
        self.activation = as_activation(activation)
        layout = WeightLayout.of(self.activation, transposed, interleaved)
        b1, b2 = optional_device_array(b1, "b1"), optional_device_array(b2, "b2")
        self.w1_scale = self.w2_scale = None
        self.dims, w1, w2, w1_scale, w2_scale = expert_weights(w1, w2, b1, b2, w1_scale, w2_scale, layout)
        self.device_id = w1.data.device_id
        scales = (("w1_scale", w1_scale), ("w2_scale", w2_scale))
        check_device(self.device_id, (("w2", w2), ("b1", b1), ("b2", b2), *scales))
        with self._on_device():  # copies of non-contiguous weights go where the weights are
            capturing = _capture.capturing()
            self.w1, self.w2 = contiguous(w1, "w1", capturing), contiguous(w2, "w2", capturing)
            if self.dims.fp8 is None:
                self.b1 = None if b1 is None else contiguous(b1, "b1", capturing)
                self.b2 = None if b2 is None else contiguous(b2, "b2", capturing)
            else:  # one fp8 kernel serves bf16 and fp16 x: fp32 biases, scales [E, blocks, blocks]
                self.b1, self.b2 = (_float32(b, name, capturing) for b, name in ((b1, "b1"), (b2, "b2")))
                self.w1_scale, self.w2_scale = (
                    _float32(s, name, capturing).reshape(s.shape[0], -1, s.shape[-1] if s.ndim == 3 else 1)
                    for s, name in ((w1_scale, "w1_scale"), (w2_scale, "w2_scale"))
                )
        self._weight_spans = byte_spans(
            (
                ("w1", self.w1),
                ("w2", self.w2),
                ("b1", self.b1),
                ("b2", self.b2),
                ("w1_scale", self.w1_scale),
                ("w2_scale", self.w2_scale),
            )
        )
        self._gate = gate_args(layout, self.activation, self.dims.intermediate)
        self._read_weights: dict[str, tuple] = {}  # per backend: (w1, w2, layout) as it reads them
        self.first_expert = first_expert
        self.num_experts = first_expert + self.dims.num_local_experts if num_experts is None else num_experts
        _validate.check_expert_range(self.num_experts, first_expert, self.dims.num_local_experts)
        self._workspace = Workspace()
        self._caller_workspace = Workspace(owned=False)
        self._carved: dict[tuple, _Carved] = {}

    def _on_device(self):
        import cupy

        return cupy.cuda.Device(self.device_id)

    def _weights_for(self, backend, capturing: bool) -> tuple:
        """(w1, w2, their layout) as `backend` reads them: the layer's own, or a copy in the
        layout it reads, made on its first call (portable kernels and transposed weights: double
        the memory). Kept per backend: a call looks it up once."""
        found = self._read_weights.get(backend.name)
        if found is not None:
            return found
        layout = backend.reads(self.dims.layout)
        if layout == self.dims.layout:
            found = self.w1, self.w2, layout
        else:
            import cupy

            if capturing:
                _capture.refuse_copy(
                    "w1",
                    f"is transposed and the {backend.name} kernels read a copy",
                    "Run one call before capturing",
                )
            w1, w2 = (cupy.ascontiguousarray(w.transpose(0, 2, 1)) for w in (self.w1, self.w2))
            found = w1, w2, layout
        self._read_weights[backend.name] = found
        return found

    def workspace_bytes(
        self, num_tokens: int, top_k: int, *, fused_finalize: bool | None = None, out_dtype=None
    ) -> int:
        """Device bytes that serve every call of up to `num_tokens` tokens with `top_k` slots, this
        finalize path and output dtype: what `workspace=` must hold, and what `reserve`
        allocates."""
        with self._on_device():
            return workspace_bytes(self.dims, num_tokens, top_k, fused_finalize, out_dtype)

    def reserve(
        self, max_tokens: int, top_k: int, *, fused_finalize: bool | None = None, out_dtype=None
    ) -> None:
        """Allocate the layer's own workspace for every batch of up to `max_tokens` tokens now."""
        needed = self.workspace_bytes(max_tokens, top_k, fused_finalize=fused_finalize, out_dtype=out_dtype)
        with self._on_device():
            self._grow(self._workspace, needed)

    def _grow(self, workspace: Workspace, nbytes: int) -> None:
        """Let the views carved from `workspace` go before its buffer is replaced (they would keep
        the old buffer alive through the new one's allocation), then grow it."""
        if nbytes > workspace.nbytes:
            self._carved = {key: c for key, c in self._carved.items() if c.workspace is not workspace}
        workspace.reserve(nbytes)

    def _carve(
        self,
        backend,
        dims: ExpertDims,
        workspace: Workspace,
        num_tokens: int,
        top_k: int,
        fused: bool,
        out_dtype,
    ):
        """The forward configuration, workspace arrays and routing plan of a call kind, chosen
        once. Kept per kind (up to MAX_CARVED) while the buffer stays: a repeated batch shape
        skips the choice and the layout, which cost more host time than the launches
        (docs/DESIGN.md D12)."""
        own = workspace is self._workspace
        key = (own, num_tokens, top_k, fused, out_dtype, dims.dtype, overrides.current(), backend.name)
        carved = self._carved.get(key)
        if carved is not None and carved.generation == workspace.generation:
            return carved
        config = configure(backend, dims, num_tokens, top_k, fused, out_dtype)
        num_local = dims.num_local_experts
        specs = workspace_specs(dims, num_tokens, top_k, config)
        _validate.check_plan_fits(num_tokens, top_k, num_local, config.tile_m)
        self._grow(workspace, layout_bytes(specs))
        arrays = workspace.carve(specs)
        routing = plan_from_arrays(
            num_tokens, top_k, self.num_experts, self.first_expert, num_local, config.tile_m, arrays
        )
        self._carved = {k: c for k, c in self._carved.items() if c.generation == c.workspace.generation}
        if len(self._carved) >= MAX_CARVED:
            del self._carved[next(iter(self._carved))]
        self._carved[key] = carved = _Carved(workspace, workspace.generation, config, arrays, routing)
        return carved

    def __call__(
        self,
        x,
        topk_weights,
        topk_ids,
        *,
        out=None,
        out_dtype=None,
        fused_finalize: bool | None = None,
        workspace=None,
    ):
        """`out [T, H]` for tokens `x [T, H]` routed by `topk_ids [T, k]` with `topk_weights [T, k]`.

        `fused_finalize` (default True; `MOEFUSE_DISABLE_FUSED_FINALIZE=1` forces False): GEMM2's
        epilogue adds each weighted row straight into `out` with atomics. The sum order then varies
        from run to run for k >= 3; with k <= 2 it is deterministic (two adds onto zero commute).
        False runs the deterministic path: GEMM2 stores rows, a finalize kernel sums them in slot
        order. `out_dtype` is x's dtype (default) or float32. `workspace`: a device buffer of at
        least `workspace_bytes(T, k, fused_finalize=..., out_dtype=...)` bytes to use instead of
        the layer's own; `out` and `workspace` must not overlap any input."""
        out, steps = self.steps(
            x,
            topk_weights,
            topk_ids,
            out=out,
            out_dtype=out_dtype,
            fused_finalize=fused_finalize,
            workspace=workspace,
        )
        for _, launch in steps:
            launch()
        return like_input(out, x, topk_weights, topk_ids, self)  # JAX in, JAX out

    def steps(
        self,
        x,
        topk_weights,
        topk_ids,
        *,
        out=None,
        out_dtype=None,
        fused_finalize: bool | None = None,
        workspace=None,
    ):
        """The forward as `(out, [(name, launch), ...])`: calling each `launch()` in order is
        exactly `__call__` (arguments are checked, and the workspace taken, here). For profiling
        the stages one by one. fp8 layers quantise x first (step "quantize")."""
        import cupy

        x = as_device_array(x, "x")
        topk_weights = as_device_array(topk_weights, "topk_weights")
        topk_ids = as_device_array(topk_ids, "topk_ids")
        dims = self.dims
        if dims.fp8 is not None:  # the activations' dtype is x's
            _validate.check_activations(x)
            dims = replace(dims, dtype=np.dtype(x.dtype))
        num_tokens, top_k = _validate.check_moe_inputs(x, topk_weights, topk_ids, dims, self.num_experts)
        shape = (num_tokens, self.dims.hidden)
        device_id, capturing = require_gpu(), _capture.capturing()
        if out is not None:
            out = as_device_array(out, "out")
            dtype = _validate.resolve_out_dtype(out.dtype if out_dtype is None else out_dtype, x.dtype)
            _validate.check_out(out, shape, dtype)
            require_aligned(out, "out")
        if workspace is not None:
            workspace = device_buffer(workspace, "workspace")
        inputs = (("x", x), ("topk_weights", topk_weights), ("topk_ids", topk_ids))
        outputs = (("out", out), ("workspace", workspace))
        check_device(device_id, (("the layer's w1", self.w1), *inputs, *outputs))
        check_disjoint(outputs, inputs, self._weight_spans)
        if out is None:
            out = cupy.empty(shape, dtype=_validate.resolve_out_dtype(out_dtype, x.dtype))
        if num_tokens == 0:
            return out, []
        if _debug.enabled():
            _debug.check_ids(topk_ids, self.num_experts, capturing)
            _debug.check_weights(topk_weights, capturing)

        fused = fused_finalize_enabled(fused_finalize)
        x, topk_ids = contiguous(x, "x", capturing), contiguous(topk_ids, "topk_ids", capturing)
        convert_weights = topk_weights.dtype != FLOAT32 or not topk_weights.flags.c_contiguous
        backend = backends.for_device(device_id)
        require_fp8_backend(backend, dims)
        if workspace is not None:
            self._caller_workspace.use(workspace)
        buffer = self._workspace if workspace is None else self._caller_workspace
        carved = self._carve(backend, dims, buffer, num_tokens, top_k, fused, out.dtype)
        if capturing and workspace is None:
            self._workspace.hold_for_capture()
        config, arrays, routing = carved.config, carved.arrays, carved.routing
        w1, w2, layout = self._weights_for(backend, capturing)
        weights = arrays["topk_weights"] if convert_weights else topk_weights
        h, x_perm, y = arrays["h"], arrays.get("x_perm"), arrays.get("y")
        # The fused path adds into `out`, which must start at zero: GEMM1 clears it where the
        # configuration says so, a memset otherwise.
        zero = out if config.clears_out else None
        a1 = x if x_perm is None else x_perm
        # fp8: GEMM1 reads x quantised (x_q, x_s) and writes h_q with its scales h_s, GEMM2's A.
        x_s, h_s = arrays.get("x_s"), arrays.get("h_s")
        scales1 = scales2 = {}
        if dims.fp8 is not None:
            a1 = arrays["x_q"]
            scales1 = dict(a_scale=x_s, w_scale=self.w1_scale, h_scale=h_s)
            scales2 = dict(a_scale=h_s, w_scale=self.w2_scale)
        gemm1 = GemmArrays(a1, w1, self.b1, routing, h, zero=zero, layout=layout, gate=self._gate, **scales1)
        steps = []
        if convert_weights:
            steps.append(("weights", lambda: cupy.copyto(weights, topk_weights, casting="unsafe")))
        steps.append(("plan", lambda: launch_plan(topk_ids, routing, arrays)))
        if x_perm is not None:
            steps.append(("gather", lambda: kernels.gather_rows(x, routing, x_perm)))
        if dims.fp8 is not None:
            group = "row" if dims.fp8.kind == "tensor" else str(_x_scale_group(dims, config))
            steps.append(("quantize", lambda: kernels.quantize_rows(x, group, a1, x_s)))
        steps.append(("gemm1", lambda: run(config.gemm1, gemm1)))
        if fused:
            if not config.clears_out:
                memset = cupy.cuda.runtime.memsetAsync
                steps.append(("zero_out", lambda: memset(out.data.ptr, 0, out.nbytes, stream_ptr())))
            gemm2 = GemmArrays(h, w2, self.b2, routing, out, weights, layout=layout, **scales2)
            steps.append(("gemm2", lambda: run(config.gemm2, gemm2)))
        else:
            gemm2 = GemmArrays(h, w2, self.b2, routing, y, layout=layout, **scales2)
            steps += [
                ("gemm2", lambda: run(config.gemm2, gemm2)),
                ("finalize", lambda: kernels.finalize(y, routing, weights, out)),
            ]
        return out, steps


__all__ = ["MoELayer", "fused_finalize_enabled", "is_fp8"]
