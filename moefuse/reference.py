"""float64 numpy references for every op: tests compare the plan exactly and the GEMMs by norm."""

from __future__ import annotations

import numpy as np

from .activation import as_activation


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
    num_tokens, top_k = np.asarray(topk_ids).shape
    local = local_experts(topk_ids, first_expert, w1.shape[0])
    weights = np.asarray(topk_weights, dtype=np.float64).reshape(-1)
    hidden = x64.shape[1]
    out = np.zeros((num_tokens, hidden), dtype=np.float64)
    for e in np.unique(local[local >= 0]):
        pairs = np.flatnonzero(local == e)
        tokens = pairs // top_k
        w1e, w2e = (np.asarray(w[e], dtype=np.float64) for w in (w1, w2))
        if transposed:
            w1e, w2e = w1e.T, w2e.T
        gate_up = x64[tokens] @ w1e.T
        if b1 is not None:
            gate_up += np.asarray(b1[e], dtype=np.float64)
        if not act.gated:
            gate, up = None, gate_up
        elif interleaved:
            gate, up = gate_up[:, 0::2], gate_up[:, 1::2]
        else:
            gate, up = np.split(gate_up, 2, axis=-1)
        y = act.reference(gate, up) @ w2e.T
        if b2 is not None:
            y += np.asarray(b2[e], dtype=np.float64)
        np.add.at(out, tokens, weights[pairs, None] * y)
    return out


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
