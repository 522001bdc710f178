"""Random GPU test inputs (fresh every call, never zeros) and their host copies."""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp16": np.dtype(np.float16)}
TOLERANCE = {"bf16": 1e-2, "fp16": 3e-3}


def random_ids(rng, num_tokens: int, top_k: int, num_experts: int, skew: float = 0.0) -> np.ndarray:
    """Distinct experts per token; with `skew`, that fraction of tokens puts expert 0 in slot 0."""
    ids = np.argsort(rng.random((num_tokens, num_experts)), axis=1)[:, :top_k]
    for t in np.flatnonzero(rng.random(num_tokens) < skew):
        row = [0] + [e for e in ids[t] if e != 0]
        ids[t] = row[:top_k]
    return ids.astype(np.int32)


@dataclass
class MoEProblem:
    x: np.ndarray
    w1: np.ndarray
    w2: np.ndarray
    b1: np.ndarray | None
    b2: np.ndarray | None
    topk_weights: np.ndarray
    topk_ids: np.ndarray

    def device(self):
        import cupy

        return {k: None if v is None else cupy.asarray(v) for k, v in self.__dict__.items()}


def moe_problem(
    rng,
    dtype: str,
    num_tokens: int,
    hidden: int,
    inter: int,
    num_experts: int,
    top_k: int,
    bias: bool,
    skew: float = 0.0,
) -> MoEProblem:
    dt = DTYPES[dtype]

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(dt)

    weights = rng.random((num_tokens, top_k)).astype(np.float32) + 0.1
    return MoEProblem(
        x=normal(num_tokens, hidden),
        w1=normal(num_experts, 2 * inter, hidden, scale=hidden**-0.5),
        w2=normal(num_experts, hidden, inter, scale=inter**-0.5),
        b1=normal(num_experts, 2 * inter, scale=0.1) if bias else None,
        b2=normal(num_experts, hidden, scale=0.1) if bias else None,
        topk_weights=weights / weights.sum(axis=1, keepdims=True),
        topk_ids=random_ids(rng, num_tokens, top_k, num_experts, skew),
    )
