"""float64 numpy references for every op: tests compare the plan exactly and the GEMMs by norm."""

from __future__ import annotations

import numpy as np

from ._arrays import E4M3
from .activation import as_activation
from .fp8 import H_GROUP, Fp8Format, dequantize_weights


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; inf when `out` holds a NaN or inf."""
    out64, ref64 = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if not np.all(np.isfinite(out64)):
        return float("inf")
    return float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), np.finfo(np.float64).tiny))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def router_keys(router_logits, method="softmax", correction_bias=None, n_group=1, topk_group=1):
    """Each expert's key for moefuse.route's `method` (float64, -inf outside the groups kept), and
    the group scores ("sigmoid"; None for the others)."""
    logits = np.asarray(router_logits, dtype=np.float64)
    if method != "sigmoid":
        return logits, None
    bias = 0.0 if correction_bias is None else np.asarray(correction_bias, dtype=np.float64)
    keys = 1.0 / (1.0 + np.exp(-logits)) + bias
    groups = keys.reshape(len(keys), n_group, -1)
    group_scores = np.sort(groups, axis=2)[:, :, -2:].sum(axis=2)  # each group's two largest
    kept = np.argsort(-group_scores, axis=1, kind="stable")[:, :topk_group]
    mask = np.zeros(group_scores.shape, dtype=bool)
    np.put_along_axis(mask, kept, True, axis=1)
    return np.where(np.repeat(mask, groups.shape[2], axis=1), keys, -np.inf), group_scores


def route(
    router_logits: np.ndarray,
    k: int,
    renormalize: bool = True,
    *,
    method: str = "softmax",
    correction_bias=None,
    n_group: int = 1,
    topk_group: int = 1,
    scaling_factor: float = 1.0,
):
    """moefuse.route's routers in float64; ids by descending key, ties to the lower id."""
    logits = np.asarray(router_logits, dtype=np.float64)
    keys, _ = router_keys(logits, method, correction_bias, n_group, topk_group)
    ids = np.argsort(-keys, axis=1, kind="stable")[:, :k]  # ties: lower id first
    if method == "softmax":
        weights = np.take_along_axis(_softmax(logits), ids, axis=1)
    elif method == "topk_softmax":
        weights = _softmax(np.take_along_axis(logits, ids, axis=1))
    else:
        weights = np.take_along_axis(1.0 / (1.0 + np.exp(-logits)), ids, axis=1)
    if renormalize and method != "topk_softmax":  # a softmax over the k sums to 1 already
        weights /= weights.sum(axis=1, keepdims=True)
    return weights * scaling_factor, ids.astype(np.int32)


def local_experts(topk_ids: np.ndarray, first_expert: int, num_local_experts: int) -> np.ndarray:
    """Local expert per expanded index, -1 where the pair is routed elsewhere."""
    local = np.asarray(topk_ids, dtype=np.int64).reshape(-1) - first_expert
    return np.where((local >= 0) & (local < num_local_experts), local, -1)


def plan(
    topk_ids: np.ndarray,
    first_expert: int,
    num_local_experts: int,
    tile_m: int,
    capacity_rows: int,
    max_tiles: int,
):
    """The routing plan's arrays (see moefuse.plan for the invariants), as numpy int32 arrays."""
    local = local_experts(topk_ids, first_expert, num_local_experts)
    counts = np.bincount(local[local >= 0], minlength=num_local_experts)
    tiles = -(-counts // tile_m)
    offsets = np.concatenate([[0], np.cumsum(tiles * tile_m)])
    order = np.argsort(np.where(local >= 0, local, num_local_experts), kind="stable")
    routed = order[: int(counts.sum())]
    segment_start = np.concatenate([[0], np.cumsum(counts)])[:-1]
    rows = offsets[local[routed]] + np.arange(routed.size) - segment_start[local[routed]]
    permuted_to_expanded = np.full(capacity_rows, -1, dtype=np.int32)
    permuted_to_expanded[rows] = routed
    expanded_to_permuted = np.full(local.size, -1, dtype=np.int32)
    expanded_to_permuted[routed] = rows
    tile_expert = np.full(max_tiles, -1, dtype=np.int32)
    tile_expert[: int(tiles.sum())] = np.repeat(np.arange(num_local_experts), tiles)
    return {
        "expert_counts": counts.astype(np.int32),
        "expert_offsets": offsets.astype(np.int32),
        "permuted_to_expanded": permuted_to_expanded,
        "expanded_to_permuted": expanded_to_permuted,
        "tile_expert": tile_expert,
    }


def _gated(gate_up: np.ndarray, act, interleaved: bool) -> np.ndarray:
    """The activation of GEMM1's rows (biases added): gate and up halves, interleaved pairs, or
    not gated."""
    if not act.gated:
        return act.reference(None, gate_up)
    if interleaved:
        return act.reference(gate_up[:, 0::2], gate_up[:, 1::2])
    return act.reference(*np.split(gate_up, 2, axis=-1))


def _experts(topk_ids, first_expert: int, num_local: int):
    """(local expert, its expanded pairs t*k + j) for every local expert that has pairs."""
    local = local_experts(topk_ids, first_expert, num_local)
    for e in np.unique(local[local >= 0]):
        yield e, np.flatnonzero(local == e)


def _matrix(w, e, transposed: bool) -> np.ndarray:
    """Expert e's matrix of w in float64, [N, K] whatever the layout."""
    matrix = np.asarray(w[e], dtype=np.float64)
    return matrix.T if transposed else matrix


def _bias(bias, e) -> np.ndarray | float:
    return 0.0 if bias is None else np.asarray(bias[e], dtype=np.float64)


def moe(
    x,
    w1,
    w2,
    topk_weights,
    topk_ids,
    b1=None,
    b2=None,
    first_expert: int = 0,
    *,
    activation="swiglu",
    transposed: bool = False,
    interleaved: bool = False,
) -> np.ndarray:
    """out[t] = sum_j w[t, j] * (act(x[t] @ w1[e].T + b1[e]) @ w2[e].T + b2[e]) in float64, for
    the weights' layout and activation as `moefuse.MoELayer` takes them."""
    act = as_activation(activation)
    x64 = np.asarray(x, dtype=np.float64)
    top_k = np.asarray(topk_ids).shape[1]
    weights = np.asarray(topk_weights, dtype=np.float64).reshape(-1)
    out = np.zeros(x64.shape, dtype=np.float64)
    for e, pairs in _experts(topk_ids, first_expert, w1.shape[0]):
        tokens = pairs // top_k
        h = _gated(x64[tokens] @ _matrix(w1, e, transposed).T + _bias(b1, e), act, interleaved)
        y = h @ _matrix(w2, e, transposed).T + _bias(b2, e)
        np.add.at(out, tokens, weights[pairs, None] * y)
    return out


# ---- fp8 (docs/DESIGN.md D30) -------------------------------------------------------------------
def e4m3_satfinite(values) -> np.ndarray:
    """float32 `values` as e4m3, as `cvt.rn.satfinite.e4m3x2.f32` converts them: to nearest, ties to
    even, beyond +-448 (inf included) to +-448, NaN to NaN. (ml_dtypes' own conversion rounds 464
    to 448 but 465 to NaN: e4m3fn has no inf, and 480 would be its NaN code.)"""
    return np.clip(np.asarray(values, dtype=np.float32), -448, 448).astype(E4M3)


def _e4m3(q) -> np.ndarray:
    """e4m3 values given as float8_e4m3fn or as their bits (uint8, as a kernel's output reads back)."""
    q = np.asarray(q)
    return q.view(E4M3) if q.dtype == np.uint8 else q


def quantize_groups(x, group: int) -> tuple[np.ndarray, np.ndarray]:
    """The kernels' activation quantiser, bit for bit: `(q [R, C] e4m3, s [R, ceil(C / group)]
    float32)` of `x [R, C]` read as float32 (bf16 and fp16 exactly; the kernels hold h in fp32),
    per row and per `group` values along it (the last group partial), all in float32:
    `amax = fmax(max |v|, 1e-4)` (NaN ignored, as fmaxf does), `q = e4m3_satfinite(v * (448 /
    amax))` (IEEE division), `s = amax / 448`.

    Non-finite input: a NaN stays in its own element (q NaN) and leaves the rest of its group as
    if it were absent. An inf makes its group's amax inf: `s = inf`, `448 / inf = 0`, every
    finite value's q is 0 and the inf's `inf * 0` is NaN, so the whole group dequantises to NaN."""
    v = np.asarray(x, dtype=np.float32)
    rows, cols = v.shape
    q = np.empty(v.shape, E4M3)
    s = np.empty((rows, -(-cols // group)), np.float32)
    with np.errstate(invalid="ignore"):  # inf * 0 -> NaN, as on the GPU
        for g in range(s.shape[1]):
            part = slice(g * group, (g + 1) * group)
            amax = np.fmax(np.fmax.reduce(np.abs(v[:, part]), axis=1), np.float32(1e-4))
            q[:, part] = e4m3_satfinite(v[:, part] * (np.float32(448) / amax)[:, None])
            s[:, g] = amax / np.float32(448)
    return q, s


def dequantize_groups(q, s, group: int) -> np.ndarray:
    """`q * s` in float64 (exact) for `quantize_groups`' output (q as e4m3 or its uint8 bits)."""
    values = _e4m3(q).astype(np.float64)
    scales = np.repeat(np.asarray(s, dtype=np.float64), group, axis=1)[:, : values.shape[1]]
    with np.errstate(invalid="ignore"):  # 0 * inf (a group that held an inf) -> NaN
        return values * scales


def moe_fp8_h(
    x_q,
    x_s,
    w1_q,
    w1_scale,
    topk_ids,
    b1=None,
    first_expert: int = 0,
    *,
    activation="swiglu",
    transposed: bool = False,
    interleaved: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """GEMM1 of the fp8 layer from quantised x (`quantize_groups(x, group)`, the group from
    w1_scale's format: 128 or H): `h = act(deq(x) @ deq(w1[e]).T + b1[e])` in float64 per expanded
    pair t*k + j, rounded to float32 and quantised per 64 of I. Returns `(h_q [T*k, I] e4m3,
    h_s [T*k, ceil(I/64)] float32)`; rows of pairs routed elsewhere are 0 with NaN scales."""
    act = as_activation(activation)
    top_k = np.asarray(topk_ids).shape[1]
    x64 = dequantize_groups(x_q, x_s, Fp8Format.of(np.asarray(w1_scale)).x_group(np.shape(x_q)[1]))
    w1 = dequantize_weights(np.asarray(w1_q), np.asarray(w1_scale), np.float64)
    w1_rows = w1.shape[2 if transposed else 1]
    h = np.zeros((np.asarray(topk_ids).size, w1_rows // 2 if act.gated else w1_rows), np.float32)
    for e, pairs in _experts(topk_ids, first_expert, w1.shape[0]):
        h[pairs] = _gated(x64[pairs // top_k] @ _matrix(w1, e, transposed).T + _bias(b1, e), act, interleaved)
    h_q, h_s = quantize_groups(h, H_GROUP)
    h_s[local_experts(topk_ids, first_expert, w1.shape[0]) < 0] = np.nan
    return h_q, h_s


def moe_fp8_from_h(
    h_q,
    h_s,
    w2_q,
    w2_scale,
    topk_weights,
    topk_ids,
    b2=None,
    first_expert: int = 0,
    *,
    transposed: bool = False,
) -> np.ndarray:
    """GEMM2 and the finalize of the fp8 layer in float64 from quantised h per expanded pair t*k + j
    (`h_q [T*k, I]` e4m3 or its bits, `h_s [T*k, ceil(I/64)]`, the rows of pairs routed elsewhere
    unread): `out[t] = sum_j w[t, j] * (deq(h)[t*k + j] @ deq(w2[e]).T + b2[e])`. Given a kernel's
    own h (its permuted rows gathered into pair order, its scales transposed), this checks GEMM2
    apart from GEMM1's roundings."""
    top_k = np.asarray(topk_ids).shape[1]
    h64 = dequantize_groups(h_q, h_s, H_GROUP)
    w2 = dequantize_weights(np.asarray(w2_q), np.asarray(w2_scale), np.float64)
    weights = np.asarray(topk_weights, dtype=np.float64).reshape(-1)
    out = np.zeros((np.asarray(topk_ids).shape[0], w2.shape[2 if transposed else 1]), np.float64)
    for e, pairs in _experts(topk_ids, first_expert, w2.shape[0]):
        y = h64[pairs] @ _matrix(w2, e, transposed).T + _bias(b2, e)
        np.add.at(out, pairs // top_k, weights[pairs, None] * y)
    return out


def moe_fp8(
    x,
    w1_q,
    w1_scale,
    w2_q,
    w2_scale,
    topk_weights,
    topk_ids,
    b1=None,
    b2=None,
    first_expert: int = 0,
    *,
    activation="swiglu",
    transposed: bool = False,
    interleaved: bool = False,
) -> np.ndarray:
    """The fp8 layer in float64 from the same quantised operands as the kernels: the dequantised
    weights, x quantised as the kernels do it (per 128 of H, or per token with per-tensor
    scales), h in float64 quantised per 64 of I (`moe_fp8_h`), then `moe_fp8_from_h`."""
    x32 = np.asarray(x, dtype=np.float32)
    x_q, x_s = quantize_groups(x32, Fp8Format.of(np.asarray(w1_scale)).x_group(x32.shape[1]))
    h_q, h_s = moe_fp8_h(
        x_q,
        x_s,
        w1_q,
        w1_scale,
        topk_ids,
        b1,
        first_expert,
        activation=activation,
        transposed=transposed,
        interleaved=interleaved,
    )
    return moe_fp8_from_h(
        h_q, h_s, w2_q, w2_scale, topk_weights, topk_ids, b2, first_expert, transposed=transposed
    )


def grouped_gemm(a, w, permuted_to_expanded, expert_offsets, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """(rows, out[rows]) for the routed permuted rows of `a` times `w[e].T` (+ bias[e])."""
    rows = np.flatnonzero(np.asarray(permuted_to_expanded) >= 0)
    experts = np.searchsorted(np.asarray(expert_offsets), rows, side="right") - 1
    a64 = np.asarray(a, dtype=np.float64)[rows]
    w64 = np.asarray(w, dtype=np.float64)
    out = np.einsum("rk,rnk->rn", a64, w64[experts])
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[experts]
    return rows, out
