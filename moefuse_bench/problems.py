"""Problems to run: routing (uniform and skewed), random bf16/fp16 device fills, the benchmark's
cases with their rotating input sets, and the host-side random problems of the GPU tests.

CuPy is imported inside the device functions: the GPU tests import this module for its host
problems on machines where they then skip.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any, NamedTuple

import ml_dtypes
import numpy as np

from moefuse.fp8 import Fp8Format, quantize_weights

from .shapes import Shape

if TYPE_CHECKING:
    import cupy as cp

    import moefuse

DTYPES = {"bf16": np.dtype(ml_dtypes.bfloat16), "fp16": np.dtype(np.float16)}
TOLERANCE = {"bf16": 1e-2, "fp16": 3e-3}


# ------------------------------------------------------------------ routing


def random_ids(rng, num_tokens: int, top_k: int, num_experts: int, skew: float = 0.0) -> np.ndarray:
    """Distinct experts per token; with `skew`, that fraction of tokens puts expert 0 in slot 0."""
    ids = np.argsort(rng.random((num_tokens, num_experts)), axis=1)[:, :top_k]
    for t in np.flatnonzero(rng.random(num_tokens) < skew):
        row = [0] + [e for e in ids[t] if e != 0]
        ids[t] = row[:top_k]
    return ids.astype(np.int32)


def make_routing(rng: np.random.Generator, T: int, E: int, k: int, skew: bool) -> np.ndarray:
    """The benchmark's routing: k distinct experts per token; with `skew`, the first half of the
    tokens put expert 0 in slot 0 (moved there if chosen). Kept apart from `random_ids`, whose
    draws differ, so that a seed gives the benchmark the routing it always had."""
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k].astype(np.int32)
    if skew:
        sub, rows = ids[: T // 2], np.arange(T // 2)
        hit = sub == 0
        has, j = hit.any(axis=1), hit.argmax(axis=1)
        sub[rows[has], j[has]] = sub[has, 0]
        sub[:, 0] = 0
    return ids


# ------------------------------------------------------------------ host problems (GPU tests)


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


# ------------------------------------------------------------------ device fills and cases


def fill_randn(dst: cp.ndarray, scale: float, chunk: int = 1 << 27) -> cp.ndarray:
    """Fill a bf16/fp16 array with N(0, scale^2) on the current stream, in chunks to bound the
    fp32 temporaries (DeepSeek's weights are 22 GiB of bf16)."""
    import cupy as cp

    from .dtypes import f32_to_bits

    bits = dst.view(cp.uint16).reshape(dst.shape[0], -1)
    step = max(1, chunk // bits.shape[1])
    for s in range(0, bits.shape[0], step):
        src = cp.random.standard_normal((min(step, bits.shape[0] - s), bits.shape[1]), cp.float32)
        src *= scale
        bits[s : s + src.shape[0]] = f32_to_bits(src, dst.dtype)
    return dst


def randn(shape: tuple[int, ...], scale: float, dtype: np.dtype) -> cp.ndarray:
    import cupy as cp

    return fill_randn(cp.empty(shape, dtype=dtype), scale)


# The weight layouts real models store (moefuse.MoELayer's transposed= and interleaved=).
LAYOUTS = {
    "standard": dict(transposed=False, interleaved=False),
    "interleaved": dict(transposed=False, interleaved=True),
    "transposed": dict(transposed=True, interleaved=False),
    "gpt_oss": dict(transposed=True, interleaved=True),
}


def stored_as(w1, w2, b1=None, *, transposed: bool, interleaved: bool) -> tuple:
    """(w1, w2, b1) in the standard layout (w1 [E, 2I, H] gate rows then up rows, w2 [E, H, I],
    b1 [E, 2I]; numpy or CuPy) as a layout stores them: the gate/up order, then the major order."""

    xp = np if isinstance(w1, np.ndarray) else sys.modules["cupy"]  # the arrays' own module

    def interleave(a):  # [E, 2I, ...]: gate j and up j to 2j and 2j + 1
        half = a.shape[1] // 2
        return xp.stack([a[:, :half], a[:, half:]], axis=2).reshape(a.shape)

    if interleaved:
        w1, b1 = interleave(w1), None if b1 is None else interleave(b1)
    if transposed:
        w1, w2 = w1.transpose(0, 2, 1), w2.transpose(0, 2, 1)
    return xp.ascontiguousarray(w1), xp.ascontiguousarray(w2), b1


def random_weights(shape: Shape, dtype: np.dtype) -> tuple[cp.ndarray, cp.ndarray]:
    """(w1 [E, 2I, H], w2 [E, H, I]) scaled by 1/sqrt(fan-in): outputs of order one."""
    w1 = randn((shape.E, 2 * shape.I, shape.H), shape.H**-0.5, dtype)
    return w1, randn((shape.E, shape.H, shape.I), shape.I**-0.5, dtype)


class Inputs(NamedTuple):
    """One input set: x [T, H], topk_weights [T, k] fp32, topk_ids [T, k] int32, on the GPU."""

    x: Any
    weights: Any
    ids: Any


def expert_bytes(shape: Shape, elem: int, block_scales: bool = False) -> int:
    """One expert's w1 and w2: 3*H*I elements of `elem` bytes, and with `block_scales` (fp8
    weights) their fp32 scales, one per 128 x 128 block as moefuse.fp8's block format stores them."""
    nbytes = 3 * shape.H * shape.I * elem
    if block_scales:
        blocks = Fp8Format("block").scale_shape
        nbytes += 4 * sum(math.prod(blocks(w)) for w in ((1, 2 * shape.I, shape.H), (1, shape.H, shape.I)))
    return nbytes


@dataclass
class Case:
    """T tokens of a shape with `sets` input sets (rotated between timed repetitions)."""

    shape: Shape
    T: int
    skew: bool
    dtype: np.dtype  # x's and out's
    sets: list[Inputs]
    distinct: float  # mean number of distinct experts hit per set (counted on the host)
    fp8: bool = False  # the weights read are e4m3 with 128 x 128 block scales (bench.py --weights fp8)

    @property
    def name(self) -> str:
        return self.shape.name + ("+skew" if self.skew else "")

    @property
    def flops(self) -> float:
        return self.shape.flops(self.T)

    @property
    def bytes(self) -> float:
        """The weights of the experts hit (3*H*I elements each, with fp8 one byte each plus their
        block scales), x and out."""
        s, elem = self.shape, self.dtype.itemsize
        weights = expert_bytes(s, 1, block_scales=True) if self.fp8 else expert_bytes(s, elem)
        return self.distinct * weights + 2 * self.T * s.H * elem


def make_case(
    shape: Shape,
    T: int,
    *,
    dtype: np.dtype,
    n_sets: int = 1,
    skew: bool = False,
    seed: int = 0,
    fp8: bool = False,
) -> Case:
    """Input sets with softmax router weights; x from CuPy's generator, on the current stream."""
    import cupy as cp

    rng = np.random.default_rng([seed, T, int(skew)])
    sets, distinct = [], []
    for _ in range(n_sets):
        ids = make_routing(rng, T, shape.E, shape.k, skew)
        logits = rng.standard_normal((T, shape.k))
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
        sets.append(Inputs(randn((T, shape.H), 1.0, dtype), cp.asarray(w), cp.asarray(ids)))
        distinct.append(len(np.unique(ids)))
    return Case(shape, T, skew, dtype, sets, float(np.mean(distinct)), fp8)


def expert_layer(package: ModuleType, w1, w2, *, fp8: bool = False) -> Any:
    """`package`'s MoELayer (moefuse, or an older copy under A/B) over w1, w2, or with `fp8` over
    their e4m3 form with 128 x 128 block scales: bench.py --weights fp8's layer."""
    if not fp8:
        return package.MoELayer(w1, w2)
    (q1, s1), (q2, s2) = (quantize_weights(w, "block") for w in (w1, w2))
    return package.MoELayer(q1, q2, w1_scale=s1, w2_scale=s2)


def random_problem(
    shape: Shape,
    T: int,
    *,
    skew: bool = False,
    dtype: np.dtype = DTYPES["bf16"],
    n_sets: int = 1,
    fp8: bool = False,
) -> tuple[moefuse.MoELayer, Case]:
    """A layer over random weights (with `fp8`, their e4m3 form with 128 x 128 block scales, as
    bench.py --weights fp8 makes it) and a case to run it on, for the tools. The device is synced
    at the end: the arrays were made on the current stream, the tools time on their own."""
    import cupy as cp

    import moefuse

    layer = expert_layer(moefuse, *random_weights(shape, dtype), fp8=fp8)
    case = make_case(shape, T, dtype=dtype, n_sets=n_sets, skew=skew)
    cp.cuda.Device().synchronize()
    return layer, case
