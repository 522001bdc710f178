"""Batch invariance (GPU only): in the deterministic modes, a token's output bits do not depend on
the batch it rides in.

The guarantee under test: with the fused finalize at k <= 2, or with `fused_finalize=False` at any
k, a token's row of `out` is bitwise the same whether the token is computed in the full batch, in
a prefix of it, or in any other sub-batch in any order. A serving stack's output then does not
depend on which requests were batched together.

Each test fixes the weights and the routing of FULL_BATCH tokens and runs the whole batch once,
checked against the float64 reference (so that invariance cannot pass on garbage). Then it runs,
at each size T of SIZES and at every size where the kernel choice switches between them, the
first T tokens and T random tokens in random order, and compares every token's row bit for bit
with the same token's row of the full batch. A sub-batch puts a token in another M tile position,
at another offset of its expert's segment, in another swapped chunk, and often under another
kernel. The switch points are found by asking the backend's configuration (host only) every 32
tokens and bisecting where it changes, so the M tile, BN, K-split, family and geometry switches of
moefuse/heuristics.py are crossed wherever they lie on this GPU (its SM count moves some).

Modes: the heuristics' own choices (what users get); on Hopper also the portable backend (sm80)
and each Hopper kernel family (rows, swapped, wide) forced. A test reports every mismatch of every
mode together: the mode, T, which token rows, how many elements, the largest difference (absolute
and in ulps) and the kernels chosen at T and for the full batch.

What would break it, and is therefore excluded by the library: a K split of the fused GEMM2 at
k <= 2 (a split's rounded partial sums differ from the unsplit sum a larger batch computes), so
`heuristics.max_scatter_splits` never splits there; and an atomic bf16 add of an unrounded fp32
value (the portable kernels' CAS loop before sm_90 rounds the addend first, as the sm_90
instruction does). The mixtral k = 1 fused cases are the ones a decode split would break; the
unfused k = 1 case is their control. The other switches (M tile, BN, family, swapped chunks and
geometry) change which MMA instruction computes a token's row but not the order of K: they are
expected to keep the bits, and a finding there means the MMA's result depends on its shape or
operand order.

Shapes: scaled down (each test is a few seconds, the float64 reference included), ratios kept:
  * mixtral: H=576, I=2048, E=8 (Mixtral 8x7B: I/H = 3.5, 8 experts). I >= 8 K blocks: GEMM2 can
    split K at decode; I >= ~1900: the swapped family's gather share is <= 5% at k = 2, so the
    heuristics go rows -> swapped (narrow, and guarded wide tiles) as T grows, as for Mixtral.
    H is not a multiple of the 128- or 256-column tiles.
  * qwen3: H=512, I=192, E=32 (Qwen3 MoE: I/H = 0.375, 128 experts scaled to 32); small I: GEMM2
    never splits; swapped only near 96-192 rows per expert.
  * deepseek: H=768, I=224, E=64 (DeepSeek-V3: I/H = 0.29, 256 experts); 64 local experts keep the
    64-row tiles of choose_sm90_tile_m up to 48 rows per expert; I is not a multiple of the K block.
  * deepseek-ep: the same experts as one rank of four: experts [64, 128) of 256, global ids, most
    pairs routed elsewhere (and some ids -1), so many tokens have nothing here (exactly zero rows).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import moefuse
from moefuse import reference
from moefuse_bench.problems import DTYPES, TOLERANCE, MoEProblem, random_ids

pytestmark = pytest.mark.gpu

FULL_BATCH = 4096
# Decode sizes, both sides of the 64- and 128-row tiles, odd sizes, and batches near the full one.
SIZES = (1, 2, 3, 7, 16, 17, 64, 100, 127, 128, 129, 255, 256, 511, 1000, 1024, 2048, 3001, 4095)
# Where the kernel choice is looked up (host only, no launch) to find its switch points: between
# two of these the choice may switch away and back unseen.
PROBES = tuple(range(32, FULL_BATCH, 32))
MAX_SWITCHES = 12  # per mode: switch points of the kernel choice added to SIZES (two sizes each)
MAX_REPORTED = 60  # mismatch lines in a failure message


@dataclass(frozen=True)
class Shape:
    name: str
    hidden: int
    inter: int
    local_experts: int
    num_experts: int = 0  # of the whole model, for expert parallelism (0: the local ones)
    first_expert: int = 0

    @property
    def all_experts(self) -> int:
        return self.num_experts or self.local_experts


MIXTRAL = Shape("mixtral", 576, 2048, 8)
QWEN3 = Shape("qwen3", 512, 192, 32)
DEEPSEEK = Shape("deepseek", 768, 224, 64)
DEEPSEEK_EP = Shape("deepseek-ep", 768, 224, 64, num_experts=256, first_expert=64)


@dataclass(frozen=True)
class Case:
    shape: Shape
    top_k: int
    fused: bool
    dtype: str = "bf16"
    out_f32: bool = False
    bias: bool = False
    skew: float = 0.0  # that fraction of tokens puts the first local expert in slot 0
    drop: float = 0.0  # that fraction of ids is -1

    def __str__(self) -> str:
        parts = [self.shape.name, f"k{self.top_k}", "fused" if self.fused else "unfused", self.dtype]
        parts.append("out_f32" if self.out_f32 else "out_" + self.dtype)
        parts += ["bias"] * self.bias + [f"skew{self.skew}"] * bool(self.skew)
        return "-".join(parts + [f"drop{self.drop}"] * bool(self.drop))


FUSED = [  # k <= 2: bitwise reproducible, and claimed batch invariant
    Case(MIXTRAL, 2, True),
    Case(MIXTRAL, 2, True, "fp16", out_f32=True, bias=True, skew=0.5),
    Case(MIXTRAL, 1, True, bias=True),  # expected to break: the decode K split (module docstring)
    Case(MIXTRAL, 1, True, "fp16", out_f32=True, skew=0.3),  # the same into an fp32 out
    Case(QWEN3, 2, True, out_f32=True, bias=True, skew=0.8),
    Case(QWEN3, 2, True, "fp16"),
    Case(DEEPSEEK, 2, True, bias=True),
    Case(DEEPSEEK_EP, 2, True, "fp16", out_f32=True, skew=0.5, drop=0.05),
]
UNFUSED = [  # fused_finalize=False: the deterministic path at any k
    Case(MIXTRAL, 2, False, bias=True, skew=0.5),
    Case(MIXTRAL, 1, False, "fp16"),  # the control of the fused k = 1 cases: no K split
    Case(QWEN3, 8, False, skew=0.3),
    Case(QWEN3, 8, False, "fp16", out_f32=True, bias=True),
    Case(DEEPSEEK, 8, False, "fp16", bias=True, skew=0.5),
    Case(DEEPSEEK_EP, 8, False, out_f32=True, bias=True, drop=0.05),
]


def make_problem(rng: np.random.Generator, case: Case) -> MoEProblem:
    """FULL_BATCH tokens, the layer's local experts, global ids (k distinct experts per token)."""
    s, dt, k = case.shape, DTYPES[case.dtype], case.top_k

    def normal(*shape, scale=1.0):
        return (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype(dt)

    ids = random_ids(rng, FULL_BATCH, k, s.all_experts, case.skew)
    ids = (ids + s.first_expert) % s.all_experts  # the skew's hot expert 0 becomes the first local one
    ids[rng.random(ids.shape) < case.drop] = -1
    weights = rng.random((FULL_BATCH, k), dtype=np.float32) + np.float32(0.1)
    e, h, i = s.local_experts, s.hidden, s.inter
    return MoEProblem(
        x=normal(FULL_BATCH, h),
        w1=normal(e, 2 * i, h, scale=h**-0.5),
        w2=normal(e, h, i, scale=i**-0.5),
        b1=normal(e, 2 * i, scale=0.1) if case.bias else None,
        b2=normal(e, h, scale=0.1) if case.bias else None,
        topk_weights=weights / weights.sum(axis=1, keepdims=True),
        topk_ids=ids.astype(np.int32),
    )


def modes() -> dict[str, dict]:
    """Mode name -> `moefuse.override` arguments: the heuristics' choice, and on Hopper the portable
    backend and each Hopper family forced."""
    import cupy

    if cupy.cuda.Device().compute_capability != "90":
        return {"auto": {}}  # the portable kernels are the native ones
    return {
        "auto": {},
        "sm80": {"backend": "sm80"},
        "rows": {"backend": "sm90", "family": "rows"},
        "swapped": {"backend": "sm90", "family": "swapped"},
        "wide": {"backend": "sm90", "family": "wide"},
    }


# ------------------------------------------------------------------ host helpers (no GPU)


def bits(a: np.ndarray) -> np.ndarray:
    """The raw bits of a 16- or 32-bit float array (NaNs compare equal, -0 and +0 do not)."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def ordered(a: np.ndarray) -> np.ndarray:
    """The values' bit patterns as integers in the values' order (+0 and -0 both 0): differences
    are distances in ulps."""
    b = bits(a).astype(np.int64)
    sign = np.int64(1) << (8 * a.dtype.itemsize - 1)
    return np.where(b & sign, -(b & (sign - 1)), b)


@dataclass(frozen=True)
class Mismatch:
    rows: np.ndarray  # the rows (of the sub-batch) with any bit different
    elements: int
    max_abs: float  # over the elements where both are finite (nan if none is)
    max_ulps: int  # likewise (-1 if none is)
    non_finite: int  # elements of `got` that are NaN or inf where `want` differs


def bit_mismatch(got: np.ndarray, want: np.ndarray) -> Mismatch | None:
    """None if `got` and `want` ([rows, H], one dtype) are bitwise equal, else what differs."""
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype, want.shape)
    differ = bits(got) != bits(want)
    if not differ.any():
        return None
    g, w = got[differ].astype(np.float64), want[differ].astype(np.float64)
    finite = np.isfinite(g) & np.isfinite(w)
    ulps = np.abs(ordered(got)[differ] - ordered(want)[differ])[finite]
    return Mismatch(
        rows=np.flatnonzero(differ.any(axis=1)),
        elements=int(differ.sum()),
        max_abs=float(np.abs(g - w)[finite].max()) if finite.any() else float("nan"),
        max_ulps=int(ulps.max()) if finite.any() else -1,
        non_finite=int((~np.isfinite(g)).sum()),
    )


def switch_sizes(choice: Callable[[int], object], sizes, limit: int) -> list[int]:
    """Sizes T with choice(T) != choice(T - 1), found by bisection between neighbours of the
    sorted `sizes` whose choices differ (each found one is a true switch; a choice that switches
    away and back between two sizes of equal choice is not seen), at most `limit`."""
    sizes, found = sorted(set(sizes)), []
    for a, b in itertools.pairwise(sizes):
        lo = a
        while choice(lo) != choice(b) and len(found) < limit:
            start, hi = choice(lo), b
            while hi - lo > 1:  # choice(lo) == start != choice(hi)
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if choice(mid) == start else (lo, mid)
            found.append(hi)
            lo = hi
    return found


def describe_config(config, guards: bool = True) -> str:
    """A forward configuration (moefuse.backends.ForwardConfig) in a line: the plan's M tile and
    each GEMM launch's kernel, K splits and busiest-expert guard (`guards=False`: without the
    guard's row count, which changes with every T)."""
    parts = [f"tile_m {config.tile_m}"]
    for gemm, launches in (("gemm1", config.gemm1), ("gemm2", config.gemm2)):
        for launch in launches:
            text = f"{gemm} {launch.spec.name}"
            splits = launch.fixed.get("k_splits", 1)
            if splits != 1:
                text += f" k_splits={splits}"
            guard = launch.fixed.get("busiest_guard", 0)
            if guard:
                limit = abs(guard) if guards else "L"
                text += f" (runs iff the busiest expert has {'<=' if guard > 0 else '>'} {limit} rows)"
            parts.append(text)
    return "; ".join(parts)


# ------------------------------------------------------------------ device helpers


def kernel_choice(layer, num_tokens: int, top_k: int, fused: bool, out_dtype, guards: bool = True) -> str:
    """The kernels a call of this kind launches under the overrides in force, as the layer would
    configure it. Only for messages and switch points: a failure here is reported, not raised."""
    import cupy

    from moefuse import backends
    from moefuse.layer import configure, fused_finalize_enabled

    try:
        backend = backends.for_device(cupy.cuda.Device().id)
        config = configure(backend, layer.dims, num_tokens, top_k, fused_finalize_enabled(fused), out_dtype)
        return describe_config(config, guards)
    except Exception as exc:  # diagnostics must not hide the test's own result
        return f"(kernel choice unknown: {exc!r})"


def run(layer, x, topk_weights, topk_ids, out_dtype, fused: bool) -> np.ndarray:
    """One forward into a NaN-filled `out` over a NaN-poisoned workspace (0xFF bytes: a read of
    anything this call did not write shows); the host copy of `out`."""
    import cupy

    buffer = layer._workspace._buffer
    if buffer is not None:
        buffer.fill(0xFF)
    out = cupy.full((x.shape[0], layer.dims.hidden), np.nan, dtype=out_dtype)
    layer(x, topk_weights, topk_ids, out=out, fused_finalize=fused)
    return out.get()


def check_mode(mode: str, layer, p: MoEProblem, d: dict, want, idle, case: Case, out_dtype, rng) -> list[str]:
    """The full batch (`d`: `p` on the GPU) against the reference, then every sub-batch against
    the full batch, under the overrides in force: the findings, one line each. Sub-batches are
    gathered on the host (CuPy need not index 16-bit float types)."""
    import cupy

    k, fused, tolerance = case.top_k, case.fused, TOLERANCE[case.dtype]
    choice = functools.cache(lambda t: kernel_choice(layer, t, k, fused, out_dtype, guards=False))
    switches = switch_sizes(choice, SIZES + PROBES, MAX_SWITCHES)
    sizes = sorted(set(SIZES) | {t for s in switches for t in (s - 1, s)})
    # Every layout up to the full batch: no call below grows (and un-poisons) the workspace.
    layer.reserve(FULL_BATCH, k, fused_finalize=fused, out_dtype=out_dtype)

    full = run(layer, d["x"], d["topk_weights"], d["topk_ids"], out_dtype, fused)
    full_kernels = kernel_choice(layer, FULL_BATCH, k, fused, out_dtype)
    error = reference.relative_error(full, want)
    if not error < tolerance:
        return [
            f"[{mode}] the full batch of {FULL_BATCH} is wrong: relative error {error:.3g} against the "
            f"float64 reference (tolerance {tolerance}); kernels: {full_kernels}"
        ]
    stray = np.flatnonzero((full[idle].astype(np.float64) != 0).any(axis=1))
    if stray.size:
        return [
            f"[{mode}] {stray.size} tokens with no pair routed to a local expert have nonzero rows in the "
            f"full batch (tokens {np.flatnonzero(idle)[stray[:8]].tolist()}); kernels: {full_kernels}"
        ]

    findings = []
    for t in sizes:
        for what, tokens in (("prefix", np.arange(t)), ("subset", rng.choice(FULL_BATCH, t, replace=False))):
            sub = (cupy.asarray(a[tokens]) for a in (p.x, p.topk_weights, p.topk_ids))
            got = run(layer, *sub, out_dtype, fused)
            m = bit_mismatch(got, full[tokens])
            if m is None:
                continue
            shown = ", ".join(f"{tokens[r]}@{r}" for r in m.rows[:8])
            more = f", ... {m.rows.size - 8} more" if m.rows.size > 8 else ""
            size = f"max |diff| {m.max_abs:.3g} ({m.max_ulps} ulp)" if m.max_ulps >= 0 else "none finite"
            findings.append(
                f"[{mode}] T={t} {what}: {m.rows.size} of {t} token rows differ from the same tokens in "
                f"the full batch (token@row: {shown}{more}); {m.elements} elements, {size}, "
                f"{m.non_finite} non-finite; relative error of the sub-batch against the reference "
                f"{reference.relative_error(got, want[tokens]):.2e}. "
                f"Kernels at T={t}: {kernel_choice(layer, t, k, fused, out_dtype)}. "
                f"At T={FULL_BATCH}: {full_kernels}"
            )
    return findings


@pytest.mark.parametrize("case", FUSED + UNFUSED, ids=str)
def test_batch_invariance(rng, case):
    """Every token's row, computed in prefixes and shuffled sub-batches of every size, bitwise equals
    its row in the full batch, in each mode; and the full batch matches the float64 reference."""
    assert case.top_k <= 2 or not case.fused, "the fused path is deterministic for k <= 2 only"
    s = case.shape
    p = make_problem(rng, case)
    d = p.device()
    layer = moefuse.MoELayer(
        d["w1"], d["w2"], d["b1"], d["b2"], first_expert=s.first_expert, num_experts=s.all_experts
    )
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2, first_expert=s.first_expert)
    local = reference.local_experts(p.topk_ids, s.first_expert, s.local_experts).reshape(p.topk_ids.shape)
    idle = (local < 0).all(axis=1)  # tokens with no pair here: their rows must be exactly zero
    out_dtype = np.dtype(np.float32) if case.out_f32 else DTYPES[case.dtype]

    findings = []
    for mode, forced in modes().items():
        with moefuse.override(**forced):
            findings += check_mode(mode, layer, p, d, want, idle, case, out_dtype, rng)
    if findings:
        more = len(findings) - MAX_REPORTED
        tail = [f"... and {more} more"] if more > 0 else []
        pytest.fail(
            f"{case}: {len(findings)} findings (modes {list(modes())}):\n"
            + "\n".join(findings[:MAX_REPORTED] + tail),
            pytrace=False,
        )
