"""Benchmark moefuse's MoE expert layer against the GPU's ceilings and two baselines.

Method (DESIGN.md section 7): FLOPs = 2*T*k*H*2I + 2*T*k*I*H; bytes = weights of the experts hit
(3*H*I elements each) + x + out. The ceilings (a cuBLAS 8192^3 matmul through CuPy, a 1 GiB
device-to-device copy counting read + write) are measured in the same run; a case's floor is
max(FLOPs / matmul ceiling, bytes / copy ceiling) and "%floor" = floor / measured time.
Times are medians of CUDA-event timings after warm-up; before each repetition, outside its
events, L2 is flushed by a memset, and repetitions rotate over several input sets. For small T
moefuse is timed as CUDA-graph replays (CuPy refuses cuBLAS during capture, so baselines are not).
bf16 conversions, SwiGLU and row gathers run on uint16 views through small ElementwiseKernels, so
only cupy.matmul must know the bfloat16 dtype; if it does not, the CuPy baseline upcasts to fp32.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

try:
    import cupy as cp
except Exception as exc:
    cp = None
    CUPY_ERROR = " ".join(str(exc).split())
try:
    import ml_dtypes

    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:
    BF16 = None

SHAPES = {  # name: (H, I, E, k)
    "mixtral": (4096, 14336, 8, 2),
    "deepseek": (7168, 2048, 256, 8),
    "qwen3": (2048, 768, 128, 8),
}
GiB = 1 << 30
WARN_REL_ERR = 2e-2


@dataclass
class Shape:
    name: str
    H: int
    I: int  # noqa: E741 - the usual name of the expert intermediate size
    E: int
    k: int


@dataclass
class Case:
    shape: Shape
    T: int
    skew: bool
    dtype: np.dtype
    sets: list  # [(x [T,H], topk_weights [T,k] f32, topk_ids [T,k] i32)] on the GPU
    distinct: float  # mean number of distinct experts hit per set (counted on the host)
    flops: float
    bytes: float

    @property
    def name(self) -> str:
        return self.shape.name + ("+skew" if self.skew else "")


# ------------------------------------------------------------------ dtype helpers on uint16 views


@functools.cache
def kernels() -> dict[str, Any]:
    rne = "unsigned int b = __float_as_uint(r); b += 0x7FFFu + ((b >> 16) & 1u); y = b >> 16;"
    silu = "float r = g / (1.0f + expf(-g)) * u;"
    bits = "float g = __uint_as_float((unsigned int)gb << 16);"
    bits += "float u = __uint_as_float((unsigned int)ub << 16);"
    ek = cp.ElementwiseKernel
    return {
        "b2f": ek("uint16 b", "float32 y", "y = __uint_as_float((unsigned int)b << 16)", "bench_b2f"),
        "f2b": ek("float32 r", "uint16 y", rne, "bench_f2b"),
        "swiglu_bf16": ek("uint16 gb, uint16 ub", "uint16 y", bits + silu + rne, "bench_swiglu"),
        "swiglu_f16": ek("T gh, T uh", "T y", "float g = gh, u = uh;" + silu + "y = (T)r;", "bench_swiglu_h"),
    }


def to_f32(a: cp.ndarray) -> cp.ndarray:
    return kernels()["b2f"](a.view(cp.uint16)) if a.dtype == BF16 else a.astype(cp.float32)


def f32_to_bits(a: cp.ndarray, dtype: np.dtype) -> cp.ndarray:
    """fp32 -> the uint16 bit pattern of `dtype` (bf16: round to nearest even; or fp16)."""
    return kernels()["f2b"](a) if dtype == BF16 else a.astype(cp.float16).view(cp.uint16)


def from_f32(a: cp.ndarray, dtype: np.dtype) -> cp.ndarray:
    return f32_to_bits(a, dtype).view(dtype)


def swiglu(h: cp.ndarray) -> cp.ndarray:
    """h [n, 2I] (gate | up) -> silu(gate) * up [n, I], computed in fp32."""
    i = h.shape[1] // 2
    if h.dtype == BF16:
        hb = h.view(cp.uint16)
        return kernels()["swiglu_bf16"](hb[:, :i], hb[:, i:]).view(h.dtype)
    return kernels()["swiglu_f16"](h[:, :i], h[:, i:])


def rel_err(a: cp.ndarray, ref: cp.ndarray) -> float:
    a32, r32 = to_f32(a), to_f32(ref)
    return float(cp.linalg.norm(a32 - r32) / cp.linalg.norm(r32))


def fill_randn(dst: cp.ndarray, scale: float, chunk: int = 1 << 27) -> cp.ndarray:
    """Fill a bf16/fp16 array with N(0, scale^2), in chunks to bound the fp32 temporaries."""
    bits = dst.view(cp.uint16).reshape(dst.shape[0], -1)
    step = max(1, chunk // bits.shape[1])
    for s in range(0, bits.shape[0], step):
        src = cp.random.standard_normal((min(step, bits.shape[0] - s), bits.shape[1]), cp.float32)
        src *= scale
        bits[s : s + src.shape[0]] = f32_to_bits(src, dst.dtype)
    return dst


def randn(shape: tuple[int, ...], scale: float, dtype: np.dtype) -> cp.ndarray:
    return fill_randn(cp.empty(shape, dtype=dtype), scale)


def short(e: BaseException, n: int = 80) -> str:
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ device, timing, ceilings


def gpu_unavailable_reason() -> str | None:
    if cp is None:
        return f"cupy not importable: {CUPY_ERROR}"
    try:
        n = cp.cuda.runtime.getDeviceCount()
    except Exception as e:
        return short(e, 160)
    return None if n > 0 else "0 devices"


def gpu_info(moefuse: Any) -> dict[str, Any]:
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = None
    with contextlib.suppress(Exception):
        import pynvml

        pynvml.nvmlInit()
        name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByPciBusId(dev.pci_bus_id))
    if not name:
        with contextlib.suppress(Exception):
            name = moefuse.gpu_name()
    name = name or props["name"]
    return {
        "name": name.decode() if isinstance(name, bytes) else str(name),
        "cc": f"{props['major']}.{props['minor']}",
        "mem_gib": round(props["totalGlobalMem"] / GiB, 1),
        "l2_bytes": int(props.get("l2CacheSize", 0)) or 50 << 20,
        "driver": cp.cuda.runtime.driverGetVersion(),
        "cupy": cp.__version__,
        "backend": moefuse.backends.for_device(dev.id).name,
    }


WARM_SECONDS = 0.05  # of warm-up calls at least: the clock climbs back from idle in a few ms


def rest_and_warm(fn: Callable[[int], object], stream: cp.cuda.Stream, rest: float, calls: int) -> float:
    """Idle the GPU `rest` seconds, then call fn(i) at least `calls` times and for at least
    WARM_SECONDS. Returns the seconds per call."""
    stream.synchronize()
    time.sleep(rest)
    t0, done = time.perf_counter(), 0
    while done < max(1, calls) or time.perf_counter() - t0 < WARM_SECONDS:
        fn(done)
        done += 1
        if done >= calls:
            stream.synchronize()
    stream.synchronize()
    return (time.perf_counter() - t0) / done


def time_fn(
    fn: Callable[[int], object],
    stream: cp.cuda.Stream,
    *,
    n_sets: int = 1,
    reps: int = 30,
    warmup: int = 5,
    flush: Callable[[], object] | None = None,
    max_seconds: float = 3.0,
    rest: float = 0.0,
) -> float:
    """Median milliseconds of fn(i), i rotating over the input sets, timed with CUDA events.

    `flush` runs before each repetition's start event, so its time is not measured. Slow
    functions get fewer repetitions (at least 5) so a measurement takes about max_seconds.
    `rest` seconds of idle GPU come first: every measurement then starts from the power state
    the ceilings were measured in, not from whatever the measurement before it left behind.
    """
    per_call = rest_and_warm(lambda i: fn(i % n_sets), stream, rest, warmup)
    reps = min(reps, max(5, int(max_seconds / max(per_call, 1e-6))))
    events = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(reps)]
    for r, (start, end) in enumerate(events):
        if flush is not None:
            flush()
        start.record(stream)
        fn(r % n_sets)
        end.record(stream)
    stream.synchronize()
    return statistics.median([cp.cuda.get_elapsed_time(s, e) for s, e in events])


def probe_bf16_matmul() -> bool:
    """True if cupy.matmul takes bf16 operands (one transposed) and gets the product right."""
    try:
        a, b = randn((64, 96), 1.0, BF16), randn((32, 96), 1.0, BF16)
        return rel_err(to_f32(cp.matmul(a, b.T)), to_f32(a) @ to_f32(b).T) < 1e-2
    except Exception:
        return False


def matmul_ceiling(stream: cp.cuda.Stream, dtype: np.dtype, rest: float, n: int = 8192) -> float:
    a, b = randn((n, n), 1.0, dtype), randn((n, n), 1.0, dtype)
    ms = time_fn(lambda _: cp.matmul(a, b), stream, reps=20, warmup=3, max_seconds=60, rest=rest)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def copy_ceiling(stream: cp.cuda.Stream, rest: float, nbytes: int = GiB) -> float:
    src, dst = cp.ones(nbytes, dtype=cp.uint8), cp.empty(nbytes, dtype=cp.uint8)
    d2d = cp.cuda.runtime.memcpyDeviceToDevice

    def copy(_: int) -> None:
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, d2d, stream.ptr)

    ms = time_fn(copy, stream, reps=20, warmup=3, max_seconds=60, rest=rest)
    return 2 * nbytes / (ms * 1e-3) / 1e9  # bytes read + bytes written


# ------------------------------------------------------------------ cases and implementations


def make_routing(rng: np.random.Generator, T: int, E: int, k: int, skew: bool) -> np.ndarray:
    ids = np.argsort(rng.random((T, E)), axis=1)[:, :k].astype(np.int32)  # k distinct experts
    if skew:  # the first half of the tokens put expert 0 in slot 0 (moved there if chosen)
        sub, rows = ids[: T // 2], np.arange(T // 2)
        hit = sub == 0
        has, j = hit.any(axis=1), hit.argmax(axis=1)
        sub[rows[has], j[has]] = sub[has, 0]
        sub[:, 0] = 0
    return ids


def make_case(shape: Shape, T: int, skew: bool, dtype: np.dtype, args: Any) -> Case:
    rng = np.random.default_rng([args.seed, T, int(skew)])
    sets, distinct = [], []
    for _ in range(args.sets):
        ids = make_routing(rng, T, shape.E, shape.k, skew)
        logits = rng.standard_normal((T, shape.k))
        w = np.exp(logits - logits.max(axis=1, keepdims=True))
        w = (w / w.sum(axis=1, keepdims=True)).astype(np.float32)
        sets.append((randn((T, shape.H), 1.0, dtype), cp.asarray(w), cp.asarray(ids)))
        distinct.append(len(np.unique(ids)))
    h, n_i, k, elem, d = shape.H, shape.I, shape.k, dtype.itemsize, float(np.mean(distinct))
    flops = 2.0 * T * k * h * 2 * n_i + 2.0 * T * k * n_i * h
    return Case(shape, T, skew, dtype, sets, d, flops, d * 3 * h * n_i * elem + 2 * T * h * elem)


def case_mem_estimate(shape: Shape, T: int, args: Any, elem: int) -> int:
    """Generous: input sets + moefuse workspace + both baselines' intermediates."""
    inputs = args.sets * T * (shape.H * elem + shape.k * 8)
    work = 3 * T * shape.k * (shape.H * (2 * elem + 8) + 3 * shape.I * elem)
    return inputs + work + (256 << 20)


def cupy_baseline(w1: cp.ndarray, w2: cp.ndarray, k: int, bf16_mm: bool) -> Callable:
    """Per-expert loop: sort by expert, gather rows, two matmuls per expert, CuPy finalize."""
    E, H = w1.shape[0], w1.shape[2]
    w1t = [w1[e].T for e in range(E)]  # [H, 2I] views: cuBLAS transposes, nothing is copied
    w2t = [w2[e].T for e in range(E)]  # [I, H]

    def mm(a: cp.ndarray, b: cp.ndarray) -> cp.ndarray:
        if a.dtype != BF16 or bf16_mm:
            return cp.matmul(a, b)
        return from_f32(cp.matmul(to_f32(a), to_f32(b)), a.dtype)

    def run(x: cp.ndarray, w: cp.ndarray, ids: cp.ndarray) -> cp.ndarray:
        T = x.shape[0]
        flat = ids.ravel()
        order = cp.argsort(flat)
        counts = cp.bincount(flat, minlength=E).get()  # host sync: allowed in the baseline
        ends = np.cumsum(counts)
        xs = x.view(cp.uint16)[order // k].view(x.dtype)  # [T*k, H] grouped by expert
        ys = cp.empty((T * k, H), dtype=cp.uint16)
        for e in np.flatnonzero(counts):
            lo, hi = int(ends[e] - counts[e]), int(ends[e])
            ys[lo:hi] = mm(swiglu(mm(xs[lo:hi], w1t[e])), w2t[e]).view(cp.uint16)
        y = cp.empty((T * k, H), dtype=cp.float32)
        y[order] = to_f32(ys.view(x.dtype))  # back to expanded (t*k + j) order
        out = cp.matmul(w[:, None, :], y.reshape(T, k, H))  # sum_j w[t,j] * y[t,j] in fp32
        return from_f32(out.reshape(T, H), x.dtype)

    return run


def torch_baseline(case: Case, w1: cp.ndarray, w2: cp.ndarray, stream: cp.cuda.Stream) -> Callable:
    """torch._grouped_mm over the same memory (DLPack), on our stream. Raises if unusable."""
    import torch

    if not torch.cuda.is_available() or not hasattr(torch, "_grouped_mm"):
        raise RuntimeError(f"torch {torch.__version__} has no CUDA or no torch._grouped_mm")
    silu = torch.nn.functional.silu

    def tt(a: cp.ndarray) -> Any:
        if a.dtype == BF16:  # should CuPy's DLPack export refuse bf16, go through uint16
            with contextlib.suppress(Exception):
                return torch.from_dlpack(a)
            return torch.from_dlpack(a.view(cp.uint16)).view(torch.bfloat16)
        return torch.from_dlpack(a)

    stream.synchronize()
    k, n_i = case.shape.k, case.shape.I
    # _grouped_mm(mat_a [M, K], mat_b [E, K, N], offs=int32 group ends [E]) -> [M, N]. It takes
    # a column-major mat_b as is: w1 [E, 2I, H] -> [E, H, 2I] and w2 [E, H, I] -> [E, I, H].
    b1, b2 = tt(w1).transpose(1, 2), tt(w2).transpose(1, 2)
    experts = torch.arange(case.shape.E, dtype=torch.int32, device=b1.device)
    sets = [(tt(x), tt(w).reshape(-1), tt(ids).reshape(-1)) for x, w, ids in case.sets]
    tstream = torch.cuda.ExternalStream(stream.ptr)

    def run(i: int) -> Any:
        x, w, ids = sets[i]
        with torch.cuda.stream(tstream):
            sorted_ids, order = torch.sort(ids, stable=True)
            offs = torch.searchsorted(sorted_ids, experts, right=True, out_int32=True)
            token = order // k
            h = torch._grouped_mm(x.index_select(0, token), b1, offs=offs)
            a = (silu(h[:, :n_i].float()) * h[:, n_i:].float()).to(x.dtype)
            y = torch._grouped_mm(a, b2, offs=offs)
            out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)
            out.index_add_(0, token, y.float() * w[order].unsqueeze(1))
            return out.to(x.dtype)

    return run


def moefuse_timer(
    layer: Any, case: Case, fused: bool, stream: cp.cuda.Stream, graph: bool
) -> tuple[Callable[[int], object], str]:
    """(run(i), mode): eager calls, or replays of one captured CUDA graph per input set."""
    out = cp.empty((case.T, case.shape.H), dtype=case.dtype)
    calls = [functools.partial(layer, x, w, ids, out=out, fused_finalize=fused) for x, w, ids in case.sets]
    if not graph:
        return (lambda i: calls[i]()), "eager"
    graphs = []
    try:
        for call in calls:
            stream.synchronize()
            stream.begin_capture()
            try:
                call()
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.end_capture()
                raise
            graphs.append(stream.end_capture())
    except Exception as e:
        log(f"  warning: CUDA graph capture failed ({short(e)}); timing eager calls")
        return (lambda i: calls[i]()), "eager (capture failed)"
    return (lambda i: graphs[i].launch(stream)), "graph"


# ------------------------------------------------------------------ running the cases


def check_case(case: Case, layer: Any, ctx: dict, args: Any, row: dict) -> tuple:
    """Correctness, once per case (also the first, compiling, calls). Returns the baselines."""
    x, w, ids = case.sets[0]
    fused = layer(x, w, ids, fused_finalize=True)
    row["err_unfused_vs_fused"] = rel_err(layer(x, w, ids, fused_finalize=False), fused)
    cupy_run = cupy_baseline(ctx["w1"], ctx["w2"], case.shape.k, ctx["bf16_mm"])
    try:
        row["err"] = rel_err(fused, cupy_run(x, w, ids))
    except Exception as e:
        cupy_run = None
        row["notes"].append(f"cupy baseline failed: {short(e)}")
    if case.dtype == BF16 and not ctx["bf16_mm"]:
        row["notes"].append("cupy baseline upcasts to fp32 (CuPy refused bf16 matmul)")
    torch_run = None
    if not args.no_baseline:
        try:
            torch_run = torch_baseline(case, ctx["w1"], ctx["w2"], ctx["stream"])
            # The baseline runs on our non-blocking stream; its result is read after it finishes
            # (converting it on torch's default stream raced with it: errors of 1.0 or NaN).
            torch_out = torch_run(0)
            ctx["stream"].synchronize()
            row["err_torch"] = rel_err(cp.from_dlpack(torch_out.float()), fused)
        except Exception as e:
            torch_run = None
            row["notes"].append(f"torch n/a ({short(e)})")
        if torch_run and (case.dtype != BF16 or ctx["gpu"]["cc"].split(".")[0] not in ("9", "10")):
            row["notes"].append("torch._grouped_mm likely runs its per-group fallback here")
    for key, what in (("err", "moefuse vs cupy baseline"), ("err_torch", "torch vs moefuse")):
        if not row.get(key, 0.0) <= WARN_REL_ERR:  # NaN fails too
            log(f"  WARNING: {what}: relative error {row[key]:.3g} > {WARN_REL_ERR}")
    return cupy_run, torch_run


def stage_times(layer: Any, case: Case, fused: bool, ctx: dict[str, Any], reps: int) -> dict[str, float]:
    """Median ms of each step of one eager forward (`MoELayer.steps`), events between steps."""
    x, w, ids = case.sets[0]
    out = cp.empty((case.T, case.shape.H), dtype=case.dtype)
    _, steps = layer.steps(x, w, ids, out=out, fused_finalize=fused)
    stream = ctx["stream"]

    def forward(_: int) -> None:
        for _, launch in steps:
            launch()

    rest_and_warm(forward, stream, ctx["tkw"]["rest"], 1)
    samples: dict[str, list[float]] = {name: [] for name, _ in steps}
    for _ in range(reps):
        ctx["flush"]()
        events = [cp.cuda.Event()]
        events[0].record(stream)
        for _, launch in steps:
            launch()
            events.append(cp.cuda.Event())
            events[-1].record(stream)
        stream.synchronize()
        for (name, _), start, end in zip(steps, events, events[1:], strict=False):
            samples[name].append(cp.cuda.get_elapsed_time(start, end))
    return {name: statistics.median(v) for name, v in samples.items()}


def run_case(case: Case, layer: Any, ctx: dict[str, Any], args: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"case": case.name, "T": case.T, "notes": []}
    cupy_run, torch_run = check_case(case, layer, ctx, args, row)
    kw = {"n_sets": len(case.sets), "flush": ctx["flush"], **ctx["tkw"]}
    graph = args.graph_max_tokens >= case.T
    for key, fused in (("fused_ms", True), ("unfused_ms", False)):
        run, mode = moefuse_timer(layer, case, fused, ctx["stream"], graph)
        row[key] = time_fn(run, ctx["stream"], **kw)
        row.setdefault("mode", mode)
    if not args.no_baseline:
        timed = [
            ("cupy_ms", cupy_run and (lambda i: cupy_run(*case.sets[i]))),
            ("torch_ms", torch_run),
        ]
        for key, run in timed:
            try:
                row[key] = time_fn(run, ctx["stream"], **kw) if run else None
            except Exception as e:
                row[key] = None
                row["notes"].append(f"{key[:-3]} timing failed: {short(e)}")
    ceil, t = ctx["ceilings"], row["fused_ms"] * 1e-3
    floor_s = max(case.flops / ceil["matmul_tflops"] / 1e12, case.bytes / ceil["copy_gbps"] / 1e9)
    baselines = [row[k] for k in ("cupy_ms", "torch_ms") if row.get(k)]
    row.update(
        distinct_experts=case.distinct,
        flops=case.flops,
        bytes=case.bytes,
        tflops=case.flops / t / 1e12,
        gbps=case.bytes / t / 1e9,
        floor_ms=floor_s * 1e3,
        pct_floor=100.0 * floor_s / t,
        fused_over_unfused=row["fused_ms"] / row["unfused_ms"],
        speedup=min(baselines) / row["fused_ms"] if baselines else None,
    )
    if args.stages:
        fused_steps = stage_times(layer, case, True, ctx, args.reps)
        store_steps = stage_times(layer, case, False, ctx, args.reps)
        row["stages"] = {f"{k} (fused)": v for k, v in fused_steps.items()}
        row["stages"].update({f"{k} (unfused)": v for k, v in store_steps.items()})
        row["gemm2_fused_over_store"] = fused_steps["gemm2"] / store_steps["gemm2"]
    return row


def free_pools() -> None:
    cp.get_default_memory_pool().free_all_blocks()
    if "torch" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["torch"].cuda.empty_cache()


def run_shape(shape: Shape, moefuse: Any, ctx: dict, args: Any, progress: Any) -> list[dict]:
    """One layer per shape: weights allocated here and freed before the next shape."""
    dtype, rows = ctx["dtype"], []
    skews = (False, True) if args.skew else (False,)
    variants = [(T, s) for T in args.tokens for s in skews if not (s and T < 2)]

    def skip(T: int, skew: bool, why: str) -> None:
        name = shape.name + ("+skew" if skew else "")
        log(f"[{next(progress)}] {name} T={T}: skipped ({why})")
        rows.append({"case": name, "T": T, "skipped": why})

    free_pools()
    need, free = 3 * shape.E * shape.H * shape.I * dtype.itemsize, cp.cuda.runtime.memGetInfo()[0]
    if need + 2 * GiB > free:
        for T, skew in variants:
            skip(T, skew, f"weights need {need / GiB:.1f} + 2 GiB, {free / GiB:.1f} GiB free")
        return rows
    try:
        w1 = fill_randn(cp.empty((shape.E, 2 * shape.I, shape.H), dtype=dtype), shape.H**-0.5)
        w2 = fill_randn(cp.empty((shape.E, shape.H, shape.I), dtype=dtype), shape.I**-0.5)
        layer = moefuse.MoELayer(w1, w2, activation="swiglu")
        layer.reserve(max(args.tokens), shape.k, fused_finalize=False)
    except Exception as e:
        for T, skew in variants:
            skip(T, skew, f"layer setup failed: {short(e)}")
        return rows
    ctx.update(w1=w1, w2=w2)
    for T, skew in variants:
        name = shape.name + ("+skew" if skew else "")
        free_pools()
        need = case_mem_estimate(shape, T, args, dtype.itemsize)
        if need > cp.cuda.runtime.memGetInfo()[0]:
            skip(T, skew, f"needs ~{need / GiB:.1f} GiB free device memory")
            continue
        log(f"[{next(progress)}] {name} T={T} ...")
        try:
            row = run_case(make_case(shape, T, skew, dtype, args), layer, ctx, args)
            log(
                f"  fused {row['fused_ms']:.4f} ms ({row['mode']}), {row['pct_floor']:.1f}% of "
                f"floor, rel err vs cupy {fmt(row.get('err'), '.1e')}"
            )
        except Exception as e:
            log(f"  failed: {short(e, 300)}")
            row = {"case": name, "T": T, "failed": short(e)}
        rows.append(row)
    del ctx["w1"], ctx["w2"], layer, w1, w2
    free_pools()
    return rows


# ------------------------------------------------------------------ report and command line


def fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else format(v, spec) + suffix


def report(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    c, g = meta["ceilings"], meta["gpu"]
    lines = [
        f"moefuse bench  {meta['date']}  GPU: {g['name']} (cc {g['cc']}, {g['mem_gib']} GiB, "
        + f"L2 {g['l2_bytes'] >> 20} MiB, driver {g['driver']})",
        f"software: moefuse {g['backend']} kernels, cupy {g['cupy']}, torch {meta['torch'] or 'n/a'}, "
        f"dtype {meta['dtype']}",
        f"command: {meta['command']}",
        f"ceilings: {c['matmul_dtype']} matmul 8192^3 {c['matmul_tflops']:.1f} TFLOP/s (cuBLAS "
        + f"via CuPy); 1 GiB D2D copy {c['copy_gbps']:.0f} GB/s (read + write)",
        f"timing: {meta['timing']}",
        "",
    ]
    head = "case T mode fused_ms TFLOP/s GB/s %floor unfused_ms f/u cupy_ms torch_ms speedup "
    head += "rel_err"
    table, notes = [head.split()], {}  # note text -> the cases it applies to
    for r in rows:
        if "fused_ms" not in r:
            table.append([r["case"], str(r["T"])] + ["-"] * (len(table[0]) - 2))
            notes.setdefault(r.get("skipped") or r.get("failed"), []).append(f"{r['case']} T={r['T']}")
            continue
        table.append([
            r["case"], str(r["T"]), r["mode"].split()[0], fmt(r["fused_ms"], ".4f"),
            fmt(r["tflops"], ".1f"), fmt(r["gbps"], ".0f"), fmt(r["pct_floor"], ".1f"),
            fmt(r["unfused_ms"], ".4f"), fmt(r["fused_over_unfused"], ".2f"),
            fmt(r.get("cupy_ms"), ".4f"), fmt(r.get("torch_ms"), ".4f"),
            fmt(r["speedup"], ".2f", "x"), fmt(r.get("err"), ".1e"),
        ])  # fmt: skip
        for n in r["notes"]:
            notes.setdefault(n, []).append(f"{r['case']} T={r['T']}")
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        cells = [
            s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    lines += [
        "",
        "%floor = max(FLOPs / matmul ceiling, bytes / copy ceiling) / fused time",
        "  (bytes: weights of the experts hit + x + out); f/u = fused / unfused time",
        "speedup = best baseline / fused; rel_err = ||moefuse fused - cupy|| / ||cupy||",
    ]
    staged = [r for r in rows if "stages" in r]
    if staged:
        names = list(dict.fromkeys(k for r in staged for k in r["stages"]))
        lines += ["", "per-step ms, one eager forward (--stages): " + ", ".join(names)]
        for r in staged:
            cells = " ".join(f"{r['stages'].get(n, float('nan')):.4f}" for n in names)
            lines.append(
                f"{r['case']:<10} {r['T']:>6}  {cells}  gemm2 fused/store {r['gemm2_fused_over_store']:.3f}"
            )
    many = len(rows) > 1
    lines += [
        f"note ({'all' if many and len(c) == len(rows) else ', '.join(c)}): {n}" for n, c in notes.items()
    ]
    return "\n".join(lines)


def parse_shapes(values: list[str]) -> list[Shape]:
    """Names (mixtral, deepseek, qwen3, all) and custom H,I,E,k, comma-separated or repeated."""
    shapes, nums = [], []
    for p in (p.strip().lower() for v in values for p in v.split(",") if p.strip()):
        if p.isdigit():
            nums.append(int(p))
            if len(nums) == 4:
                h, n_i, e, k = nums
                if not 1 <= k <= e or min(nums) < 1:
                    raise ValueError(f"custom shape {h},{n_i},{e},{k}: need positive and k <= E")
                shapes.append(Shape(f"H{h}-I{n_i}-E{e}-k{k}", h, n_i, e, k))
                nums = []
        elif nums:
            raise ValueError(f"custom shape needs 4 integers H,I,E,k, got {nums}")
        elif p == "all":
            shapes += [Shape(n, *s) for n, s in SHAPES.items()]
        elif p in SHAPES:
            shapes.append(Shape(p, *SHAPES[p]))
        else:
            raise ValueError(f"unknown shape {p!r} (names: {', '.join(SHAPES)}, all, or H,I,E,k)")
    if nums:
        raise ValueError(f"custom shape needs 4 integers H,I,E,k, got {nums}")
    return shapes or [Shape("mixtral", *SHAPES["mixtral"])]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add = p.add_argument
    shape_help = "mixtral (default), deepseek, qwen3, all, or H,I,E,k; repeat or comma-separate"
    add("--shape", action="append", default=[], help=shape_help)
    add("--tokens", default="1,16,128,1024,4096", help="comma-separated token counts T")
    add("--dtype", choices=("bf16", "fp16"), default="bf16")
    add("--skew", action="store_true", help="also run skewed routing (half the tokens to expert 0)")
    add("--reps", type=int, default=30, help="timed repetitions; the median is reported")
    add("--warmup", type=int, default=5, help="untimed warm-up calls before timing")
    add("--sets", type=int, default=4, help="input sets rotated between repetitions")
    add("--graph-max-tokens", type=int, default=128, help="CUDA-graph moefuse for T <= this")
    add("--max-seconds", type=float, default=3.0, help="cut reps (to >= 5) of slow calls to this")
    rest_help = "idle seconds before each measurement (the GPU's power state resets; 0: none)"
    add("--rest", type=float, default=0.5, help=rest_help)
    add("--no-baseline", action="store_true", help="skip baselines (CuPy still checks moefuse)")
    add("--json", metavar="FILE", help="also write all results to FILE")
    add("--stages", action="store_true", help="also time each step of the forward (plan, GEMMs, ...)")
    add("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.shapes = parse_shapes(args.shape)
        args.tokens = [int(t) for t in args.tokens.split(",") if t.strip()]
    except ValueError as e:
        p.error(str(e))
    if not args.tokens or min(args.tokens) < 1 or args.sets < 1 or args.reps < 1:
        p.error("--tokens, --sets and --reps must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    reason = gpu_unavailable_reason()
    if reason:
        print(f"bench.py: no CUDA GPU found ({reason}): nothing to measure", file=sys.stderr)
        return 2
    if BF16 is None and args.dtype == "bf16":
        print("bench.py: bf16 needs the ml_dtypes package (or pass --dtype fp16)", file=sys.stderr)
        return 1
    try:
        import moefuse
    except Exception as e:
        print(f"bench.py: cannot import moefuse: {short(e, 300)}", file=sys.stderr)
        return 1

    cp.random.seed(args.seed)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:  # everything, CuPy, moefuse and torch, runs on this one stream
        gpu = gpu_info(moefuse)
        log(f"GPU: {gpu['name']}; measuring ceilings ...")
        bf16_mm = BF16 is not None and probe_bf16_matmul()
        ceilings = {
            "matmul_tflops": matmul_ceiling(stream, BF16 if bf16_mm else np.dtype(np.float16), args.rest),
            "matmul_dtype": "bf16" if bf16_mm else "fp16 (CuPy refused bf16)",
            "copy_gbps": copy_ceiling(stream, args.rest),
        }
        free_pools()
        flush_buf = cp.empty(max(128 << 20, 4 * gpu["l2_bytes"]), dtype=cp.uint8)
        ptr, n_flush = flush_buf.data.ptr, flush_buf.nbytes
        ctx = {
            "stream": stream,
            "gpu": gpu,
            "ceilings": ceilings,
            "bf16_mm": bf16_mm,
            "dtype": BF16 if args.dtype == "bf16" else np.dtype(np.float16),
            "flush": lambda: cp.cuda.runtime.memsetAsync(ptr, 0, n_flush, stream.ptr),
            "tkw": {
                "reps": args.reps,
                "warmup": args.warmup,
                "max_seconds": args.max_seconds,
                "rest": args.rest,
            },
        }
        total = len(args.shapes) * sum(1 + (args.skew and T >= 2) for T in args.tokens)
        progress = (f"{i}/{total}" for i in range(1, total + 1))
        rows = [row for s in args.shapes for row in run_shape(s, moefuse, ctx, args, progress)]
        del flush_buf

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": shlex.join(["python", *sys.argv]),
        "gpu": gpu,
        "ceilings": ceilings,
        "dtype": args.dtype,
        "torch": getattr(sys.modules.get("torch"), "__version__", None),
        "timing": f"CUDA events, median of <= {args.reps} reps after {args.warmup} warm-ups over "
        f"{args.sets} rotating input sets; L2 flushed by a {n_flush >> 20} MiB memset before each "
        f"rep (outside the events); moefuse as CUDA-graph replays for T <= {args.graph_max_tokens}; "
        f"{args.rest:g} s idle before each measurement",
    }
    print(report(meta, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=2, default=str)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
