"""Argument checks that need no device work: shapes, dtypes, sizes. Each error names its argument.

They read only `.shape`, `.ndim` and `.dtype`, so they run on any array-like (and on numpy arrays in
the CPU-only tests)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import ACTIVATION_DTYPES, BFLOAT16, FLOAT16, FLOAT32

ACTIVATIONS = ("swiglu",)
ID_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
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


def check_top_k(k, num_experts: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(k).__name__}")
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
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
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
class ExpertDims:
    num_local_experts: int
    hidden: int  # H
    intermediate: int  # I
    dtype: np.dtype


def check_activations(x) -> tuple[int, int]:
    """x defines the batch: returns (T, H)."""
    _require_ndim(x, 2, "x", "[T, H]")
    if np.dtype(x.dtype) not in ACTIVATION_DTYPES:
        raise TypeError(
            f"x must be bfloat16 or float16, got {_dtype_name(x.dtype)} (the kernels multiply 16-bit "
            "floats and accumulate in fp32; cast fp32 activations and weights first)"
        )
    return x.shape


def check_expert_weights(w1, w2, b1=None, b2=None, *, x=None) -> ExpertDims:
    """w1 defines E and I. With `x` (fused_moe), H and the dtype are x's and each weight that
    disagrees is named; without (a layer built before any x), they are w1's."""
    _require_ndim(w1, 3, "w1", "[E, 2I, H]")
    _require_ndim(w2, 3, "w2", "[E, H, I]")
    if x is None:
        dtype, source = np.dtype(w1.dtype), "w1"
        if dtype not in ACTIVATION_DTYPES:
            raise TypeError(f"w1 must be bfloat16 or float16, got {_dtype_name(dtype)}")
        hidden = w1.shape[2]
    else:
        dtype, source = np.dtype(x.dtype), "x"
        hidden = check_activations(x)[1]
    for weight, name in ((w1, "w1"), (w2, "w2"), (b1, "b1"), (b2, "b2")):
        if weight is not None and np.dtype(weight.dtype) != dtype:
            raise TypeError(
                f"{name} must have {source}'s dtype {_dtype_name(dtype)}, got {_dtype_name(weight.dtype)}"
            )
    num_local, two_inter, w1_hidden = w1.shape
    if w1_hidden != hidden:
        raise ValueError(f"w1 must be [E, 2I, H] with H = x.shape[1] = {hidden}, got {tuple(w1.shape)}")
    if two_inter % 2:
        raise ValueError(f"w1 must be [E, 2I, H] (gate rows then up rows); its dim 1 is odd: {two_inter}")
    inter = two_inter // 2
    origin = "E and I from w1" + ("" if x is None else ", H from x")
    _require_shape(w2, (num_local, hidden, inter), "w2", f"[E, H, I] ({origin})")
    for size, what in ((hidden, "H (hidden size)"), (inter, "I (intermediate size)")):
        if size == 0 or size % ROW_ALIGNMENT:
            raise ValueError(f"{what} must be a positive multiple of {ROW_ALIGNMENT}, got {size}")
    for bias, name, shape, layout in (
        (b1, "b1", (num_local, two_inter), "[E, 2I] (from w1)"),
        (b2, "b2", (num_local, hidden), f"[E, H] ({origin})"),
    ):
        if bias is not None:
            _require_shape(bias, shape, name, layout)
    return ExpertDims(num_local, hidden, inter, dtype)


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
            f"(w1 [E, 2I, H], w2 [E, H, I])"
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


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


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
