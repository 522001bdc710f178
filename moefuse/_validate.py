"""Argument checks that need no device work: shapes, dtypes, sizes. Each error names its argument.

They read only `.shape`, `.ndim` and `.dtype`, so they run on any array-like (and on numpy arrays in
the CPU-only tests)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._arrays import ACTIVATION_DTYPES, BFLOAT16, E4M3, FLOAT16, FLOAT32, UINT8
from .fp8 import Fp8Format
from .kernels import cdiv

ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
ROUTE_METHODS = ("softmax", "topk_softmax", "sigmoid")  # route's routers (the kernels' method tags)
WEIGHT_DTYPES = (FLOAT32, BFLOAT16, FLOAT16)
INT32_LIMIT = 2**31 - 1
ROW_ALIGNMENT = 8  # elements: rows must be whole 16-byte vectors


def _dtype_name(dtype) -> str:
    return str(np.dtype(dtype))


def _require_ndim(array, ndim: int, name: str, layout: str) -> None:
    if array.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D {layout}, got shape {tuple(array.shape)}")


def _require_shape(array, shape: tuple[int, ...], name: str, layout: str) -> None:
    if tuple(array.shape) != shape:
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {tuple(array.shape)}")


def _require_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def check_top_k(k, num_experts: int, name: str = "k") -> int:
    _require_int(k, name)
    if not 1 <= k <= num_experts:
        raise ValueError(f"{name} must be in [1, num_experts={num_experts}], got {k}")
    return int(k)


def check_count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def check_router_logits(router_logits, k) -> tuple[int, int]:
    _require_ndim(router_logits, 2, "router_logits", "[T, E]")
    if router_logits.dtype.kind != "f" and np.dtype(router_logits.dtype) != BFLOAT16:
        raise TypeError(f"router_logits must be a float array, got {_dtype_name(router_logits.dtype)}")
    num_tokens, num_experts = router_logits.shape
    check_top_k(k, num_experts)
    return num_tokens, num_experts


def check_route_method(method) -> None:
    if not isinstance(method, str) or method not in ROUTE_METHODS:
        raise ValueError(f"method must be one of {ROUTE_METHODS}, got {method!r}")


def check_router(
    num_experts: int,
    k: int,
    method: str,
    correction_bias,
    n_group,
    topk_group,
    scaling_factor,
    max_groups: int,
) -> None:
    """route's router options (logits and k: check_router_logits). `max_groups`: the most groups
    the router kernel takes (it publishes the number)."""
    if isinstance(scaling_factor, bool) or not isinstance(
        scaling_factor, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"scaling_factor must be a float, got {type(scaling_factor).__name__}")
    if not (math.isfinite(scaling_factor) and scaling_factor > 0):
        raise ValueError(f"scaling_factor must be finite and > 0, got {scaling_factor}")
    n_group, topk_group = _require_int(n_group, "n_group"), _require_int(topk_group, "topk_group")
    if method != "sigmoid":
        if correction_bias is not None or n_group != 1 or topk_group != 1:
            raise ValueError(
                f"correction_bias, n_group and topk_group apply to method='sigmoid' only, not {method!r}"
            )
        return
    if not 1 <= n_group <= max_groups:
        raise ValueError(f"n_group must be in [1, {max_groups}], got {n_group}")
    if num_experts % n_group:
        raise ValueError(
            f"n_group must divide num_experts = router_logits.shape[1] = {num_experts}, got {n_group}"
        )
    group_size = num_experts // n_group
    if n_group > 1 and group_size < 2:
        raise ValueError(
            f"n_group = {n_group} leaves {group_size} expert per group; a group is scored by its two "
            "largest, so it needs at least 2"
        )
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group must be in [1, n_group={n_group}], got {topk_group}")
    if k > topk_group * group_size:
        raise ValueError(
            f"k must be at most topk_group * (num_experts / n_group) = {topk_group * group_size}, the "
            f"experts of the groups kept, got {k}"
        )
    if correction_bias is not None:
        _require_shape(correction_bias, (num_experts,), "correction_bias", "[E]")
        if correction_bias.dtype.kind != "f" and np.dtype(correction_bias.dtype) != BFLOAT16:
            raise TypeError(
                f"correction_bias must be a float array, got {_dtype_name(correction_bias.dtype)}"
            )


def check_topk_ids(topk_ids) -> tuple[int, int]:
    _require_ndim(topk_ids, 2, "topk_ids", "[T, k]")
    if np.dtype(topk_ids.dtype) not in ID_DTYPES:
        raise TypeError(f"topk_ids must be int32 or int64, got {_dtype_name(topk_ids.dtype)}")
    num_tokens, top_k = topk_ids.shape
    if num_tokens * top_k > INT32_LIMIT:
        raise ValueError(f"topk_ids has {num_tokens * top_k} entries; at most 2**31 - 1 are supported")
    return num_tokens, top_k


def check_expert_range(num_experts, first_expert, num_local_experts) -> int:
    """Validate the layer's expert range; returns num_local_experts (default: the rest)."""
    for value, name in ((num_experts, "num_experts"), (first_expert, "first_expert")):
        _require_int(value, name)
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if not 0 <= first_expert < num_experts:
        raise ValueError(f"first_expert must be in [0, num_experts={num_experts}), got {first_expert}")
    if num_local_experts is None:
        return num_experts - first_expert
    if not 1 <= num_local_experts <= num_experts - first_expert:
        raise ValueError(
            f"num_local_experts must be in [1, num_experts - first_expert = "
            f"{num_experts - first_expert}], got {num_local_experts}"
        )
    return int(num_local_experts)


def check_tile_m(tile_m, choices: tuple[int, ...]) -> None:
    """`choices`: the M tiles of the GEMM backend's kernels."""
    if tile_m is not None and tile_m not in choices:
        raise ValueError(f"tile_m must be one of {choices} or None, got {tile_m}")


@dataclass(frozen=True)
class WeightLayout:
    """How the expert weights are stored: `transposed` ([E, H, 2I] and [E, I, H], transformers'
    is_transposed), `interleaved` (gate j and up j at 2j, 2j + 1 of w1's 2I axis, gpt-oss),
    `gated` (w1 holds gate and up; else only I up rows)."""

    gated: bool = True
    transposed: bool = False
    interleaved: bool = False

    def __post_init__(self) -> None:
        for value, name in ((self.transposed, "transposed"), (self.interleaved, "interleaved")):
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {value!r}")
        if self.interleaved and not self.gated:
            raise ValueError("interleaved=True needs a gated activation: relu2's w1 has no gate rows")

    @classmethod
    def of(cls, activation, transposed: bool, interleaved: bool) -> WeightLayout:
        """The layout of weights for `activation` (a name or Activation): gated but for relu2."""
        from .activation import as_activation

        return cls(as_activation(activation).gated, transposed, interleaved)

    def w1_layout(self) -> str:
        rows = "2I" if self.gated else "I"
        return f"[E, H, {rows}]" if self.transposed else f"[E, {rows}, H]"

    def w2_layout(self) -> str:
        return "[E, I, H]" if self.transposed else "[E, H, I]"


STANDARD_LAYOUT = WeightLayout()


@dataclass(frozen=True)
class ExpertDims:
    num_local_experts: int
    hidden: int  # H
    intermediate: int  # I
    dtype: np.dtype  # the activations' (x, and h unless fp8)
    layout: WeightLayout = STANDARD_LAYOUT
    fp8: Fp8Format | None = None  # fp8 e4m3 weights' scale format (D30); None: weights in `dtype`


def check_activations(x) -> tuple[int, int]:
    """x defines the batch: returns (T, H)."""
    _require_ndim(x, 2, "x", "[T, H]")
    if np.dtype(x.dtype) not in ACTIVATION_DTYPES:
        raise TypeError(
            f"x must be bfloat16 or float16, got {_dtype_name(x.dtype)} (the kernels multiply 16-bit "
            "floats and accumulate in fp32; cast fp32 activations and weights first)"
        )
    return x.shape


def _expert_shapes(w1, w2, layout: WeightLayout, hidden: int, origin: str) -> tuple[int, int, int]:
    """(E, w1's rows: 2I or I, I) of w1 and w2 in `layout`: w1's H must be `hidden` (x's, when
    `origin` names x), w2's shape follows."""
    w1_layout = layout.w1_layout()
    h_axis, rows_axis = (1, 2) if layout.transposed else (2, 1)
    num_local, w1_rows, w1_hidden = w1.shape[0], w1.shape[rows_axis], w1.shape[h_axis]
    if w1_hidden != hidden:
        raise ValueError(f"w1 must be {w1_layout} with H = x.shape[1] = {hidden}, got {tuple(w1.shape)}")
    if layout.gated and w1_rows % 2:
        raise ValueError(f"w1 must be {w1_layout} (gate and up); its 2I axis is odd: {w1_rows}")
    inter = w1_rows // 2 if layout.gated else w1_rows
    w2_shape = (num_local, inter, hidden) if layout.transposed else (num_local, hidden, inter)
    _require_shape(w2, w2_shape, "w2", f"{layout.w2_layout()} ({origin})")
    return num_local, w1_rows, inter


def _check_bias_shapes(
    b1, b2, num_local: int, w1_rows: int, hidden: int, layout: WeightLayout, origin: str
) -> None:
    b1_layout = "[E, 2I] (from w1, in its gate/up order)" if layout.gated else "[E, I] (from w1)"
    for bias, name, shape, bias_layout in (
        (b1, "b1", (num_local, w1_rows), b1_layout),
        (b2, "b2", (num_local, hidden), f"[E, H] ({origin})"),
    ):
        if bias is not None:
            _require_shape(bias, shape, name, bias_layout)


def check_expert_weights(
    w1, w2, b1=None, b2=None, *, x=None, layout: WeightLayout = STANDARD_LAYOUT
) -> ExpertDims:
    """w1 defines E and I (its layout: `layout`). With `x` (fused_moe), H and the dtype are x's
    and each weight that disagrees is named; without (a layer built before any x), they are
    w1's."""
    _require_ndim(w1, 3, "w1", layout.w1_layout())
    _require_ndim(w2, 3, "w2", layout.w2_layout())
    if x is None:
        dtype, source = np.dtype(w1.dtype), "w1"
        if dtype not in ACTIVATION_DTYPES:
            raise TypeError(f"w1 must be bfloat16 or float16, got {_dtype_name(dtype)}")
        hidden = w1.shape[1 if layout.transposed else 2]
    else:
        dtype, source = np.dtype(x.dtype), "x"
        hidden = check_activations(x)[1]
    for weight, name in ((w1, "w1"), (w2, "w2"), (b1, "b1"), (b2, "b2")):
        if weight is not None and np.dtype(weight.dtype) != dtype:
            raise TypeError(
                f"{name} must have {source}'s dtype {_dtype_name(dtype)}, got {_dtype_name(weight.dtype)}"
            )
    origin = "E and I from w1" + ("" if x is None else ", H from x")
    num_local, w1_rows, inter = _expert_shapes(w1, w2, layout, hidden, origin)
    for size, what in ((hidden, "H (hidden size)"), (inter, "I (intermediate size)")):
        if size == 0 or size % ROW_ALIGNMENT:
            raise ValueError(f"{what} must be a positive multiple of {ROW_ALIGNMENT}, got {size}")
    _check_bias_shapes(b1, b2, num_local, w1_rows, hidden, layout, origin)
    return ExpertDims(num_local, hidden, inter, dtype, layout)


FP8_WEIGHT_DTYPES = (E4M3, UINT8)
FP8_HIDDEN_MULTIPLE = 16  # e4m3 rows of whole 16-byte vectors (TMA strides, cp.async chunks)
# A consumer warpgroup's 64 gate and 64 up features each sit inside one 128-row scale block of w1
# (concatenated or interleaved), and h is quantised per 64 of I (docs/DESIGN.md D30).
FP8_INTER_MULTIPLE = 64


@dataclass(frozen=True)
class Fp8Dims:
    """The sizes of fp8 expert weights and their scales' format (the activations' dtype is the
    layer's, not the weights')."""

    num_local_experts: int
    hidden: int  # H
    intermediate: int  # I
    format: Fp8Format


def _axis_names(layout: str) -> tuple[str, str]:
    """The names of a matrix's two stored axes in a layout: `[E, 2I, H]` -> ("2I", "H")."""
    _, rows, cols = layout.strip("[]").split(", ")
    return rows, cols


def _fp8_scale_format(scale, name: str, weight, weight_name: str, layout: str) -> Fp8Format:
    """The format `scale`'s shape says for `weight` as stored: per tensor, or 128 x 128 blocks (a
    shape that fits other blocks is refused, naming them)."""
    if scale is None:
        raise ValueError(f"{name} is required with fp8 {weight_name} (w = q * scale)")
    if np.dtype(scale.dtype) != FLOAT32:
        raise TypeError(f"{name} must be float32, got {_dtype_name(scale.dtype)}")
    experts, rows, cols = weight.shape
    shape, blocks = tuple(scale.shape), Fp8Format("block").scale_shape(weight.shape)
    if shape in ((experts,), (experts, 1, 1)):
        return Fp8Format("tensor")
    if shape == blocks:
        return Fp8Format("block")
    fits = ""
    if len(shape) == 3 and shape[0] == experts and min(shape[1:]) > 0:
        sizes = [cdiv(n, count) for n, count in ((rows, shape[1]), (cols, shape[2]))]
        if cdiv(rows, sizes[0]) == shape[1] and cdiv(cols, sizes[1]) == shape[2]:
            fits = f"; that shape fits blocks of {sizes[0]} x {sizes[1]}, and only 128 x 128 is supported"
    row_name, col_name = _axis_names(layout)
    raise ValueError(
        f"{name} must be [E, ceil({row_name}/128), ceil({col_name}/128)] = {blocks} (one scale per "
        f"128 x 128 block of {weight_name} {layout}) or [E] / [E, 1, 1] (one per expert matrix), "
        f"got {shape}{fits}"
    )


def check_fp8_weights(
    w1, w2, w1_scale, w2_scale, b1=None, b2=None, *, x=None, layout: WeightLayout = STANDARD_LAYOUT
) -> Fp8Dims:
    """fp8 expert weights (float8_e4m3fn, or their bits as uint8) in `layout` and their float32
    scales, `w = q * scale`: one per 128 x 128 block of each expert matrix as stored (w1 `[E, 2I,
    H]` -> `[E, ceil(2I/128), ceil(H/128)]`; the block size is read from the shape) or one per
    expert matrix (`[E]` or `[E, 1, 1]`), the same format for w1 and w2. H must be a multiple of
    16 and I of 64; neither needs to be a multiple of 128 (the last block is partial). Biases may
    be float32, bf16 or fp16. w1 defines E and I; with `x`, H is x's (as check_expert_weights)."""
    _require_ndim(w1, 3, "w1", layout.w1_layout())
    _require_ndim(w2, 3, "w2", layout.w2_layout())
    for weight, name in ((w1, "w1"), (w2, "w2")):
        if np.dtype(weight.dtype) not in FP8_WEIGHT_DTYPES:
            raise TypeError(
                f"{name} must be float8_e4m3fn (or its bits as uint8) with {name}_scale, got "
                f"{_dtype_name(weight.dtype)}"
            )
    if x is None:
        source, hidden = "w1", w1.shape[1 if layout.transposed else 2]
    else:
        source, hidden = "x", check_activations(x)[1]
    origin = "E and I from w1" + ("" if x is None else ", H from x")
    num_local, w1_rows, inter = _expert_shapes(w1, w2, layout, hidden, origin)
    if hidden == 0 or hidden % FP8_HIDDEN_MULTIPLE:
        raise ValueError(
            f"{source} has H = {hidden}: fp8 weights need H to be a positive multiple of "
            f"{FP8_HIDDEN_MULTIPLE} (rows of whole 16-byte e4m3 vectors)"
        )
    if inter == 0 or inter % FP8_INTER_MULTIPLE:
        raise ValueError(
            f"w1 {layout.w1_layout()} has I = {inter}: fp8 weights need I to be a positive multiple "
            f"of {FP8_INTER_MULTIPLE} (h is quantised per 64 of I, each 64 inside one 128-row block)"
        )
    w1_format = _fp8_scale_format(w1_scale, "w1_scale", w1, "w1", layout.w1_layout())
    w2_format = _fp8_scale_format(w2_scale, "w2_scale", w2, "w2", layout.w2_layout())
    if w1_format != w2_format:
        raise ValueError(
            f"w1_scale is per {w1_format.kind} and w2_scale per {w2_format.kind}: both scales "
            "must have the same format (per 128 x 128 block, or per expert matrix)"
        )
    for bias, name in ((b1, "b1"), (b2, "b2")):
        if bias is not None and np.dtype(bias.dtype) not in WEIGHT_DTYPES:
            raise TypeError(f"{name} must be float32, bfloat16 or float16, got {_dtype_name(bias.dtype)}")
    _check_bias_shapes(b1, b2, num_local, w1_rows, hidden, layout, origin)
    return Fp8Dims(num_local, hidden, inter, w1_format)


def check_moe_inputs(x, topk_weights, topk_ids, dims: ExpertDims, num_experts: int) -> tuple[int, int]:
    """Checks a call's arrays: x defines T (and H, which must be the weights'), topk_ids k.
    Returns (T, k)."""
    num_tokens, hidden = check_activations(x)
    if np.dtype(x.dtype) != dims.dtype:
        raise TypeError(
            f"x must have the weights' dtype {_dtype_name(dims.dtype)}, got {_dtype_name(x.dtype)}"
        )
    if hidden != dims.hidden:
        raise ValueError(
            f"x has H = x.shape[1] = {hidden}, but the layer's weights are for H = {dims.hidden} "
            f"(w1 {dims.layout.w1_layout()}, w2 {dims.layout.w2_layout()})"
        )
    ids_tokens, top_k = check_topk_ids(topk_ids)
    if ids_tokens != num_tokens:
        raise ValueError(
            f"topk_ids must be [T, k] with T = x.shape[0] = {num_tokens}, got {tuple(topk_ids.shape)}"
        )
    _require_ndim(topk_weights, 2, "topk_weights", "[T, k]")
    _require_shape(topk_weights, (num_tokens, top_k), "topk_weights", "[T, k] (T from x, k from topk_ids)")
    if np.dtype(topk_weights.dtype) not in WEIGHT_DTYPES:
        raise TypeError(
            f"topk_weights must be float32, bfloat16 or float16, got {_dtype_name(topk_weights.dtype)}"
        )
    check_top_k(top_k, num_experts, name="k (topk_ids.shape[1])")
    return num_tokens, top_k


def resolve_out_dtype(out_dtype, x_dtype) -> np.dtype:
    if out_dtype is None:
        return np.dtype(x_dtype)
    dtype = np.dtype(out_dtype)
    if dtype not in (np.dtype(x_dtype), FLOAT32):
        raise TypeError(f"out_dtype must be x's dtype or float32, got {_dtype_name(dtype)}")
    return dtype


def check_out(out, shape: tuple[int, ...], dtype: np.dtype, name: str = "out") -> None:
    if tuple(out.shape) != shape or np.dtype(out.dtype) != dtype:
        raise ValueError(
            f"{name} must be {_dtype_name(dtype)} with shape {shape}, got "
            f"{_dtype_name(out.dtype)} {tuple(out.shape)}"
        )
    if not out.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")


def check_plan_fits(num_tokens: int, top_k: int, num_local_experts: int, tile_m: int) -> None:
    """Every permuted row index and row offset must fit the kernels' 32-bit row indices."""
    rows = num_tokens * top_k + num_local_experts * tile_m
    if rows > INT32_LIMIT:
        raise ValueError(f"T * k + E * tile_m = {rows} rows exceed 32-bit indexing; split the batch")
