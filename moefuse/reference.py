"""float64 numpy references for every op: tests compare the plan exactly and the GEMMs by norm."""

from __future__ import annotations

import numpy as np


def relative_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; inf when `out` holds a NaN or inf."""
    out64, ref64 = np.asarray(out, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if not np.all(np.isfinite(out64)):
        return float("inf")
    return float(np.linalg.norm(out64 - ref64) / max(np.linalg.norm(ref64), np.finfo(np.float64).tiny))


def route(router_logits: np.ndarray, k: int, renormalize: bool = True):
    logits = np.asarray(router_logits, dtype=np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    ids = np.argsort(-logits, axis=1, kind="stable")[:, :k]  # ties: lower id first
    weights = np.take_along_axis(probs, ids, axis=1)
    if renormalize:
        weights /= weights.sum(axis=1, keepdims=True)
    return weights, ids.astype(np.int32)


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


def swiglu(gate_up: np.ndarray) -> np.ndarray:
    gate, up = np.split(gate_up, 2, axis=-1)
    return gate / (1.0 + np.exp(-gate)) * up


def moe(x, w1, w2, topk_weights, topk_ids, b1=None, b2=None, first_expert: int = 0) -> np.ndarray:
    """out[t] = sum_j w[t, j] * (swiglu(x[t] @ w1[e].T + b1[e]) @ w2[e].T + b2[e]) in float64."""
    x64 = np.asarray(x, dtype=np.float64)
    num_tokens, top_k = np.asarray(topk_ids).shape
    local = local_experts(topk_ids, first_expert, w1.shape[0])
    weights = np.asarray(topk_weights, dtype=np.float64).reshape(-1)
    out = np.zeros((num_tokens, w2.shape[1]), dtype=np.float64)
    for e in np.unique(local[local >= 0]):
        pairs = np.flatnonzero(local == e)
        tokens = pairs // top_k
        gate_up = x64[tokens] @ np.asarray(w1[e], dtype=np.float64).T
        if b1 is not None:
            gate_up += np.asarray(b1[e], dtype=np.float64)
        y = swiglu(gate_up) @ np.asarray(w2[e], dtype=np.float64).T
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
