"""Property-based tests on the GPU (hypothesis): the MoE forward against the float64 reference over
random shapes, dtypes, expert-parallel ranges and routings (uniform, skewed, all to one expert,
dropped and routed-elsewhere ids, one expert in several slots of a token), both finalize paths,
both backends and, on Hopper, the heuristics' and each forced kernel family; the router and the
routing plan against their references and the plan's invariants.

Bounded in time: each test draws at most `max_examples` cases; a case's weights hold at most
WEIGHT_BUDGET elements per matrix, so drawing them, the copy to the GPU and the float64 reference
take milliseconds; the kernels compile once per process. Shrinking is off (a failing case could
otherwise be re-run hundreds of times on the GPU): a failure reports the case as drawn, through
`note`, with the numpy seed that rebuilds its arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

pytest.importorskip("hypothesis", minversion="6")  # the `test` extra has it; skip, not a collection error

from hypothesis import HealthCheck, Phase, given, note, settings
from hypothesis import strategies as st

import moefuse
from moefuse import plan_capacity, reference
from moefuse.plan import PLAN_ARRAYS
from moefuse_bench.problems import DTYPES, TOLERANCE, random_ids

pytestmark = pytest.mark.gpu

WEIGHT_BUDGET = 1 << 21  # E_local * H * I: w1 holds twice that, w2 as much
MAX_TOKENS = 600
ROUTINGS = ("uniform", "skewed", "one_expert", "dropped", "duplicates")
MODES = ("sm80", "sm90-auto", "sm90-rows", "sm90-swapped", "sm90-wide", "sm90-wide-guarded")


def bounded(max_examples: int):
    return settings(
        max_examples=max_examples,
        deadline=None,
        derandomize=False,
        database=None,  # nothing written into the checkout
        phases=(Phase.explicit, Phase.generate),  # no shrinking: see the module docstring
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


# ------------------------------------------------------------------ cases and strategies


@dataclass(frozen=True)
class Routing:
    """What `make_ids` builds from `seed`: [num_tokens, top_k] global ids over num_experts, for a
    layer holding experts [first_expert, first_expert + num_local)."""

    seed: int
    num_tokens: int
    num_experts: int
    first_expert: int
    num_local: int
    top_k: int
    kind: str  # one of ROUTINGS
    drop: float  # "dropped": the fraction of ids set to -1
    ids_dtype: str  # int32 or int64


@dataclass(frozen=True)
class MoECase:
    routing: Routing
    hidden: int
    inter: int
    dtype: str  # bf16 or fp16
    bias: bool
    out_f32: bool
    weights_dtype: str  # of topk_weights: float32, or x's (the layer converts them)


@st.composite
def routings(draw, max_experts: int = 64) -> Routing:
    top_k = draw(st.integers(1, 8))
    num_experts = draw(st.integers(top_k, max_experts))  # k <= E: drawn first, so that k spreads evenly
    if draw(st.booleans()):  # expert parallel: this layer holds a slice of the experts
        first = draw(st.integers(0, num_experts - 1))
        num_local = draw(st.integers(1, num_experts - first))
    else:
        first, num_local = 0, num_experts
    return Routing(
        seed=draw(st.integers(0, 2**32 - 1)),
        num_tokens=draw(
            st.one_of(st.integers(0, 16), st.integers(17, MAX_TOKENS), st.integers(17, MAX_TOKENS))
        ),
        num_experts=num_experts,
        first_expert=first,
        num_local=num_local,
        top_k=top_k,
        kind=draw(st.sampled_from(ROUTINGS)),
        drop=draw(st.sampled_from((0.1, 0.5, 0.9, 1.0))),
        ids_dtype=draw(st.sampled_from(("int32", "int64"))),
    )


@st.composite
def moe_cases(draw) -> MoECase:
    routing = draw(routings())
    hidden = 8 * draw(st.integers(1, 64))
    max_inter = min(512, WEIGHT_BUDGET // (routing.num_local * hidden))
    return MoECase(
        routing=routing,
        hidden=hidden,
        inter=8 * draw(st.integers(1, max(1, max_inter // 8))),
        dtype=draw(st.sampled_from(("bf16", "fp16"))),
        bias=draw(st.booleans()),
        out_f32=draw(st.booleans()),
        weights_dtype=draw(st.sampled_from(("float32", "x"))),
    )


def make_ids(rng: np.random.Generator, r: Routing) -> np.ndarray:
    """The routing's ids: k distinct experts per token (uniform; skewed, with the first local
    expert in slot 0 of 90% of the tokens), every slot of every token on one local expert,
    distinct experts with a fraction of ids -1 (and, on a slice, most pairs routed elsewhere),
    or experts drawn with replacement (a token names one expert in several slots)."""
    shape, local = (r.num_tokens, r.top_k), r.first_expert + np.arange(r.num_local)
    if r.kind == "uniform":
        ids = random_ids(rng, r.num_tokens, r.top_k, r.num_experts)
    elif r.kind == "skewed":
        ids = (
            random_ids(rng, r.num_tokens, r.top_k, r.num_experts, skew=0.9) + r.first_expert
        ) % r.num_experts
    elif r.kind == "one_expert":
        ids = np.full(shape, rng.choice(local))
    elif r.kind == "dropped":
        ids = random_ids(rng, r.num_tokens, r.top_k, r.num_experts)
        ids[rng.random(shape) < r.drop] = -1
    else:
        ids = rng.integers(0, r.num_experts, size=shape)
        if r.top_k > 1:  # and for half the tokens surely: slot 1 repeats slot 0
            twice = rng.random(r.num_tokens) < 0.5
            ids[twice, 1] = ids[twice, 0]
    return ids.astype(r.ids_dtype)


@dataclass
class Problem:
    x: np.ndarray
    w1: np.ndarray  # the layer's local experts
    w2: np.ndarray
    b1: np.ndarray | None
    b2: np.ndarray | None
    topk_weights: np.ndarray  # float32, or x's dtype
    topk_ids: np.ndarray


def make_problem(case: MoECase) -> Problem:
    r, dt = case.routing, DTYPES[case.dtype]
    rng = np.random.default_rng(r.seed)
    e, h, i = r.num_local, case.hidden, case.inter

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(dt)

    ids = make_ids(rng, r)
    weights = rng.random(ids.shape, dtype=np.float32) + np.float32(0.1)
    weights /= weights.sum(axis=1, keepdims=True)
    return Problem(
        x=normal(r.num_tokens, h),
        w1=normal(e, 2 * i, h, scale=h**-0.5),
        w2=normal(e, h, i, scale=i**-0.5),
        b1=normal(e, 2 * i, scale=0.1) if case.bias else None,
        b2=normal(e, h, scale=0.1) if case.bias else None,
        topk_weights=weights if case.weights_dtype == "float32" else weights.astype(dt),
        topk_ids=ids,
    )


def idle_tokens(ids: np.ndarray, first_expert: int, num_local: int) -> np.ndarray:
    """Tokens none of whose pairs is routed to a local expert."""
    return (reference.local_experts(ids, first_expert, num_local).reshape(ids.shape) < 0).all(axis=1)


def check_output(got: np.ndarray, want: np.ndarray, idle: np.ndarray, tolerance: float, what: str) -> None:
    """Finite; exactly zero for tokens with nothing routed here (all of `out` when nothing is);
    else within `tolerance` of the reference by relative norm."""
    got64 = got.astype(np.float64)
    bad = int((~np.isfinite(got64)).sum())
    assert bad == 0, f"{what}: {bad} outputs are NaN or inf (unwritten rows read the NaN poison)"
    stray = np.flatnonzero((got64[idle] != 0).any(axis=1))
    assert stray.size == 0, (
        f"{what}: {stray.size} tokens with no pair routed here have nonzero rows "
        f"(tokens {np.flatnonzero(idle)[stray[:8]].tolist()}); they must be exactly zero"
    )
    if not np.any(want):
        assert not np.any(got64), f"{what}: nothing is routed here, yet out is not all zero"
        return
    error = reference.relative_error(got, want)
    assert error < tolerance, (
        f"{what}: relative error {error:.3g} against the float64 reference >= {tolerance}"
    )


def bits(a: np.ndarray) -> np.ndarray:
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def check_plan(
    arrays: dict, topk_ids, first_expert: int, num_local: int, tile_m: int, capacity: int, max_tiles: int
) -> None:
    """The invariants of a RoutingPlan (moefuse/plan.py's docstring), on host copies of its arrays."""
    counts, offsets = arrays["expert_counts"], arrays["expert_offsets"]
    p2e, e2p, tile_expert = (
        arrays["permuted_to_expanded"],
        arrays["expanded_to_permuted"],
        arrays["tile_expert"],
    )
    local = np.asarray(topk_ids, dtype=np.int64).reshape(-1) - first_expert
    routed = (local >= 0) & (local < num_local)
    assert counts.shape == (num_local,) and offsets.shape == (num_local + 1,)
    assert p2e.shape == (capacity,) and e2p.shape == (local.size,) and tile_expert.shape == (max_tiles,)
    np.testing.assert_array_equal(
        counts,
        np.bincount(local[routed], minlength=num_local),
        err_msg="expert_counts: pairs per local expert",
    )
    padded = -(-counts.astype(np.int64) // tile_m) * tile_m
    assert offsets[0] == 0, "expert_offsets[0]"
    np.testing.assert_array_equal(np.diff(offsets), padded, err_msg="expert_offsets: segments of whole tiles")
    assert offsets[-1] <= capacity, f"expert_offsets[-1] = {offsets[-1]} > capacity {capacity}"
    want_p2e = np.full(capacity, -1, dtype=np.int64)
    for e in np.flatnonzero(counts):
        pairs = np.flatnonzero(routed & (local == e))  # ascending expanded indices
        want_p2e[offsets[e] : offsets[e] + pairs.size] = pairs
    np.testing.assert_array_equal(
        p2e, want_p2e, err_msg="permuted_to_expanded: each segment in order, -1 pads"
    )
    want_e2p = np.full(local.size, -1, dtype=np.int64)
    rows = np.flatnonzero(want_p2e >= 0)
    want_e2p[want_p2e[rows]] = rows
    np.testing.assert_array_equal(e2p, want_e2p, err_msg="expanded_to_permuted: the inverse, -1 elsewhere")
    want_tiles = np.full(max_tiles, -1, dtype=np.int64)
    used = int(offsets[-1]) // tile_m
    assert used <= max_tiles, f"{used} tiles used > max_tiles {max_tiles}"
    want_tiles[:used] = np.repeat(np.arange(num_local), padded // tile_m)
    np.testing.assert_array_equal(
        tile_expert, want_tiles, err_msg="tile_expert: each tile's expert, -1 after"
    )


# ------------------------------------------------------------------ device helpers


def available_modes() -> tuple[str, ...]:
    import cupy

    return MODES if cupy.cuda.Device().compute_capability == "90" else ("sm80",)


def override_args(mode: str, tile_m, busiest_limit: int) -> dict:
    """`moefuse.override` arguments of a mode: a backend, the heuristics' Hopper family or one
    forced (wide tiles unguarded, or guarded on the busiest expert's rows), a forced M tile."""
    backend, _, family = mode.partition("-")
    args = {"backend": backend, "tile_m": tile_m}
    if family == "wide-guarded":
        args.update(family="wide", busiest_limit=busiest_limit)
    elif family and family != "auto":
        args["family"] = family
    return args


# ------------------------------------------------------------------ properties


@bounded(100)
@given(case=moe_cases(), data=st.data())
def test_moe_matches_reference(case, data):
    """Both finalize paths, on a backend (and Hopper family) and M tile drawn per case; the
    deterministic ones (unfused, fused with k <= 2) also bitwise reproducible."""
    import cupy

    r = case.routing
    mode = data.draw(st.sampled_from(available_modes()), label="mode")
    tile_m = data.draw(st.sampled_from((None, 64, 128)), label="tile_m")
    p = make_problem(case)
    local = reference.local_experts(p.topk_ids, r.first_expert, r.num_local)
    busiest = int(np.bincount(local[local >= 0], minlength=1).max())
    limit = data.draw(st.integers(1, max(1, 2 * busiest)), label="busiest_limit (sm90-wide-guarded)")
    note(f"case: {case}")
    note(f"routed pairs per local expert: {np.bincount(local[local >= 0], minlength=r.num_local).tolist()}")

    d = {name: None if v is None else cupy.asarray(v) for name, v in vars(p).items()}
    layer = moefuse.MoELayer(
        d["w1"], d["w2"], d["b1"], d["b2"], first_expert=r.first_expert, num_experts=r.num_experts
    )
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2, first_expert=r.first_expert)
    idle = idle_tokens(p.topk_ids, r.first_expert, r.num_local)
    out_dtype = np.dtype(np.float32) if case.out_f32 else DTYPES[case.dtype]
    shape = (r.num_tokens, case.hidden)

    def forward(fused: bool) -> np.ndarray:
        if r.num_tokens:
            layer._workspace._buffer.fill(0xFF)  # NaN bytes: a read of anything unwritten shows
        out = cupy.full(shape, np.nan, dtype=out_dtype)
        layer(d["x"], d["topk_weights"], d["topk_ids"], out=out, fused_finalize=fused)
        return out.get()

    with moefuse.override(**override_args(mode, tile_m, limit)):
        if r.num_tokens:  # (a workspace for 0 tokens is never needed, and not asked for)
            for fused in (True, False):
                layer.reserve(r.num_tokens, r.top_k, fused_finalize=fused)
        for fused in (True, False):
            what = f"fused_finalize={fused}, mode {mode}, tile_m {tile_m}"
            got = forward(fused)
            check_output(got, want, idle, TOLERANCE[case.dtype], what)
            if not fused or r.top_k <= 2:
                again = forward(fused)
                assert np.array_equal(bits(got), bits(again)), f"{what}: not bitwise reproducible"


@bounded(60)
@given(r=routings(max_experts=320), tile_m=st.sampled_from((None, 64, 128)))
def test_plan_matches_reference_and_invariants(r, tile_m):
    """Up to 320 local experts and 4800 pairs: the one-block and the multi-kernel plans."""
    import cupy

    note(f"routing: {r}, tile_m {tile_m}")
    ids = make_ids(np.random.default_rng(r.seed), r)
    routing = moefuse.plan(
        cupy.asarray(ids),
        r.num_experts,
        first_expert=r.first_expert,
        num_local_experts=r.num_local,
        tile_m=tile_m,
    )
    assert tile_m is None or routing.tile_m == tile_m
    cap = plan_capacity(r.num_tokens, r.top_k, r.num_local, routing.tile_m)
    assert (routing.capacity, routing.max_tiles) == (cap.rows, cap.tiles)
    got = {name: getattr(routing, name).get() for name in PLAN_ARRAYS}
    check_plan(got, ids, r.first_expert, r.num_local, routing.tile_m, routing.capacity, routing.max_tiles)
    want = reference.plan(
        ids, r.first_expert, r.num_local, routing.tile_m, routing.capacity, routing.max_tiles
    )
    for name in PLAN_ARRAYS:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


@bounded(40)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_tokens=st.integers(0, MAX_TOKENS),
    num_experts=st.integers(1, 300),
    data=st.data(),
    scale=st.sampled_from((0.1, 1.0, 3.0, 10.0)),
    renormalize=st.booleans(),
)
def test_route_matches_reference(seed, num_tokens, num_experts, data, scale, renormalize):
    """Continuous random fp32 logits (no ties but by chance, broken alike by both)."""
    import cupy

    k = data.draw(st.one_of(st.integers(1, min(num_experts, 8)), st.just(num_experts)), label="k")
    logits = (np.random.default_rng(seed).standard_normal((num_tokens, num_experts)) * scale).astype(
        np.float32
    )
    weights, ids = moefuse.route(cupy.asarray(logits), k, renormalize=renormalize)
    want_weights, want_ids = reference.route(logits, k, renormalize)
    np.testing.assert_array_equal(ids.get(), want_ids)
    np.testing.assert_allclose(weights.get(), want_weights, rtol=1e-4, atol=1e-6)


@bounded(20)
@given(
    seed=st.integers(0, 2**32 - 1),
    num_tokens=st.integers(1, 200),
    num_experts=st.integers(2, 64),
    levels=st.integers(1, 4),
    data=st.data(),
)
def test_route_ties_go_to_the_lower_id(seed, num_tokens, num_experts, levels, data):
    """Logits of a few distinct values: most choices are ties, which go to the lower expert id."""
    import cupy

    k = data.draw(st.integers(1, min(num_experts, 8)), label="k")
    logits = np.random.default_rng(seed).integers(0, levels, (num_tokens, num_experts)).astype(np.float32)
    weights, ids = moefuse.route(cupy.asarray(logits), k)
    want_weights, want_ids = reference.route(logits, k)
    np.testing.assert_array_equal(ids.get(), want_ids)
    np.testing.assert_allclose(weights.get(), want_weights, rtol=1e-4, atol=1e-6)
