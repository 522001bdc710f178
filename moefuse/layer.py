"""MoELayer: prepared expert weights plus a reusable workspace."""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import _validate, backends, kernels, overrides
from ._arrays import FLOAT32, as_device_array, contiguous, optional_device_array, require_aligned
from ._device import require_gpu, stream_ptr
from .backends import CallKind, ForwardConfig, GemmArrays, run
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
    (valid for one buffer)."""

    generation: int
    config: ForwardConfig
    arrays: dict
    routing: RoutingPlan


class MoELayer:
    """The expert part of one MoE layer, ready to run.

    w1: `[E_local, 2I, H]` gate rows `0..I-1` then up rows `I..2I-1` (nn.Linear layout);
    w2: `[E_local, H, I]`; b1 `[E_local, 2I]`, b2 `[E_local, H]` optional; all bf16 or all fp16.
    The layer owns experts `[first_expert, first_expert + E_local)` of `num_experts`
    (default: `first_expert + E_local`); pairs routed elsewhere, or to ids < 0, contribute nothing.

    Non-contiguous weights are copied once here. The workspace grows to the largest batch seen
    (or `reserve(max_tokens, top_k)` up front); then a call allocates nothing when given `out=`.
    """

    def __init__(
        self,
        w1,
        w2,
        b1=None,
        b2=None,
        *,
        activation: str = "swiglu",
        first_expert: int = 0,
        num_experts: int | None = None,
    ) -> None:
        _validate.check_activation(activation)
        self.w1 = contiguous(as_device_array(w1, "w1"))
        self.w2 = contiguous(as_device_array(w2, "w2"))
        b1, b2 = optional_device_array(b1, "b1"), optional_device_array(b2, "b2")
        self.dims = _validate.check_expert_weights(self.w1, self.w2, b1, b2)
        self.b1 = None if b1 is None else contiguous(b1)
        self.b2 = None if b2 is None else contiguous(b2)
        self.activation = activation
        self.first_expert = first_expert
        self.num_experts = first_expert + self.dims.num_local_experts if num_experts is None else num_experts
        _validate.check_expert_range(self.num_experts, first_expert, self.dims.num_local_experts)
        self._workspace = Workspace()
        self._carved: dict[tuple, _Carved] = {}

    def _configure(self, backend, num_tokens: int, top_k: int, fused: bool, out_dtype) -> ForwardConfig:
        d, tag = self.dims, kernels.dtype_tag
        kind = CallKind(
            num_tokens=num_tokens,
            top_k=top_k,
            num_local_experts=d.num_local_experts,
            hidden=d.hidden,
            inter=d.intermediate,
            elem=tag(d.dtype),
            out=tag(out_dtype),
            fused=fused,
        )
        return backend.configure(kind)

    def _workspace_specs(
        self, num_tokens: int, top_k: int, config: ForwardConfig, convert_weights: bool
    ) -> list[ArraySpec]:
        num_local, dims = self.dims.num_local_experts, self.dims
        specs = plan_specs(num_tokens, top_k, num_local, config.tile_m)
        rows = plan_capacity(num_tokens, top_k, num_local, config.tile_m).rows
        specs.append(ArraySpec("h", (rows, dims.intermediate), dims.dtype))
        if config.permutes_x:
            specs.append(ArraySpec("x_perm", (rows, dims.hidden), dims.dtype))
        if not config.fused:
            specs.append(ArraySpec("y", (rows, dims.hidden), dims.dtype))
        if convert_weights:
            specs.append(ArraySpec("topk_weights", (num_tokens, top_k), FLOAT32))
        return specs

    def workspace_bytes(self, num_tokens: int, top_k: int, *, fused_finalize: bool | None = None) -> int:
        """Device bytes a call with `num_tokens` tokens and `top_k` slots needs (upper bound)."""
        fused = fused_finalize_enabled(fused_finalize)
        backend = backends.for_device(require_gpu())
        config = self._configure(backend, num_tokens, top_k, fused, self.dims.dtype)
        return layout_bytes(self._workspace_specs(num_tokens, top_k, config, True))

    def reserve(self, max_tokens: int, top_k: int, *, fused_finalize: bool | None = None) -> None:
        """Allocate the workspace for batches of up to `max_tokens` tokens now."""
        self._workspace.reserve(self.workspace_bytes(max_tokens, top_k, fused_finalize=fused_finalize))
        self._forget_stale_layouts()

    def _forget_stale_layouts(self) -> None:
        """Drop the layouts carved from a buffer the workspace has let go (their views would keep
        it alive)."""
        if self._carved and next(iter(self._carved.values())).generation != self._workspace.generation:
            self._carved.clear()

    def _carve(self, backend, num_tokens: int, top_k: int, fused: bool, out_dtype, convert_weights):
        """The forward configuration, workspace arrays and routing plan of a call kind, chosen
        once. Kept per kind (up to MAX_CARVED) while the buffer stays: a repeated batch shape
        skips the choice and the layout, which cost more host time than the launches
        (docs/DESIGN.md D12)."""
        key = (num_tokens, top_k, fused, out_dtype, convert_weights, overrides.current(), backend.name)
        carved = self._carved.get(key)
        if carved is not None and carved.generation == self._workspace.generation:
            return carved
        config = self._configure(backend, num_tokens, top_k, fused, out_dtype)
        num_local = self.dims.num_local_experts
        specs = self._workspace_specs(num_tokens, top_k, config, convert_weights)
        _validate.check_plan_fits(num_tokens, top_k, num_local, config.tile_m)
        arrays = self._workspace.carve(specs)
        routing = plan_from_arrays(
            num_tokens, top_k, self.num_experts, self.first_expert, num_local, config.tile_m, arrays
        )
        self._forget_stale_layouts()
        if len(self._carved) >= MAX_CARVED:
            del self._carved[next(iter(self._carved))]
        self._carved[key] = carved = _Carved(self._workspace.generation, config, arrays, routing)
        return carved

    def __call__(self, x, topk_weights, topk_ids, *, out=None, out_dtype=None, fused_finalize=None):
        """`out [T, H]` for tokens `x [T, H]` routed by `topk_ids [T, k]` with `topk_weights [T, k]`.

        `fused_finalize` (default True; `MOEFUSE_DISABLE_FUSED_FINALIZE=1` forces False): GEMM2's
        epilogue adds each weighted row straight into `out` with atomics. The sum order then varies
        from run to run for k >= 3; with k <= 2 it is deterministic (two adds onto zero commute).
        False runs the deterministic path: GEMM2 stores rows, a finalize kernel sums them in slot
        order. `out_dtype` is x's dtype (default) or float32."""
        out, steps = self.steps(
            x, topk_weights, topk_ids, out=out, out_dtype=out_dtype, fused_finalize=fused_finalize
        )
        for _, launch in steps:
            launch()
        return out

    def steps(self, x, topk_weights, topk_ids, *, out=None, out_dtype=None, fused_finalize=None):
        """The forward as `(out, [(name, launch), ...])`: calling each `launch()` in order is
        exactly `__call__` (arguments are checked here). For profiling the stages one by one."""
        import cupy

        x = as_device_array(x, "x")
        topk_weights = as_device_array(topk_weights, "topk_weights")
        topk_ids = as_device_array(topk_ids, "topk_ids")
        num_tokens, top_k = _validate.check_moe_inputs(x, topk_weights, topk_ids, self.dims, self.num_experts)
        shape = (num_tokens, self.dims.hidden)
        if out is None:
            out = cupy.empty(shape, dtype=_validate.resolve_out_dtype(out_dtype, x.dtype))
        else:
            out = as_device_array(out, "out")
            dtype = _validate.resolve_out_dtype(out.dtype if out_dtype is None else out_dtype, x.dtype)
            _validate.check_out(out, shape, dtype)
            require_aligned(out, "out")
        if num_tokens == 0:
            return out, []

        fused = fused_finalize_enabled(fused_finalize)
        x, topk_ids = contiguous(x), contiguous(topk_ids)
        convert_weights = topk_weights.dtype != FLOAT32 or not topk_weights.flags.c_contiguous
        backend = backends.for_device(require_gpu())
        carved = self._carve(backend, num_tokens, top_k, fused, out.dtype, convert_weights)
        config, arrays, routing = carved.config, carved.arrays, carved.routing
        weights = arrays["topk_weights"] if convert_weights else topk_weights
        h, x_perm, y = arrays["h"], arrays.get("x_perm"), arrays.get("y")
        # The fused path adds into `out`, which must start at zero: GEMM1 clears it where the
        # configuration says so, a memset otherwise.
        zero = out if config.clears_out else None
        gemm1 = GemmArrays(x if x_perm is None else x_perm, self.w1, self.b1, routing, h, zero=zero)
        steps = []
        if convert_weights:
            steps.append(("weights", lambda: cupy.copyto(weights, topk_weights, casting="unsafe")))
        steps.append(("plan", lambda: launch_plan(topk_ids, routing, arrays)))
        if x_perm is not None:
            steps.append(("gather", lambda: kernels.gather_rows(x, routing, x_perm)))
        steps.append(("gemm1", lambda: run(config.gemm1, gemm1)))
        if fused:
            if not config.clears_out:
                memset = cupy.cuda.runtime.memsetAsync
                steps.append(("zero_out", lambda: memset(out.data.ptr, 0, out.nbytes, stream_ptr())))
            gemm2 = GemmArrays(h, self.w2, self.b2, routing, out, weights)
            steps.append(("gemm2", lambda: run(config.gemm2, gemm2)))
        else:
            gemm2 = GemmArrays(h, self.w2, self.b2, routing, y)
            steps += [
                ("gemm2", lambda: run(config.gemm2, gemm2)),
                ("finalize", lambda: kernels.finalize(y, routing, weights, out)),
            ]
        return out, steps


__all__ = ["MoELayer", "fused_finalize_enabled"]
