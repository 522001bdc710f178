"""bench.py's run: the ceilings, then per shape one layer over random weights and per token count
a case, checked against the CuPy baseline (and every other installed one), then timed. With fp8
weights (--weights fp8) the layer timed is one over the same weights quantised to e4m3 with
128 x 128 block scales, and the bf16 layer is timed beside it as a comparison. Results are rows of
plain dicts, the JSON file's "results"; the GPU's clocks, power and temperature are read at the
start and the end."""

from __future__ import annotations

import dataclasses
import datetime
import itertools
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import cupy as cp

from . import baselines as bl
from . import ceilings as ceil
from .device import GiB, GpuInfo, free_pools, gpu_info, gpu_state, log, short
from .dtypes import BF16, rel_err
from .problems import DTYPES, Case, expert_bytes, expert_layer, make_case, random_weights
from .report import Meta, fmt
from .shapes import Shape
from .timing import L2Flush, Timing, forward_runner, layer_step_samples, median_ms, medians

WARN_REL_ERR = 2e-2
# fp8 against bf16: block fp8 costs about 4e-2 elsewhere (issue 16); on random normal weights and
# x, moefuse.reference's fp8 layer is 6e-2 from its bf16 one, as rowwise fp8 is
WARN_FP8_REL_ERR = 8e-2


@dataclass(frozen=True)
class Options:
    """What the command line asked for."""

    shapes: list[Shape]
    tokens: list[int]
    dtype: str  # a key of problems.DTYPES
    weights: str  # "bf16" (the dtype's, in fact) or "fp8"
    skew: bool
    sets: int
    graph_max_tokens: int
    no_baseline: bool
    stages: bool
    seed: int
    timing: Timing


@dataclass(frozen=True)
class Session:
    """What every case of a run shares."""

    stream: cp.cuda.Stream
    gpu: GpuInfo
    ceilings: ceil.Ceilings
    bf16_mm: bool  # cupy.matmul takes bf16 (else the CuPy baseline upcasts)
    flush: L2Flush
    baselines: list[bl.Baseline]  # the installed torch-based ones (none with --no-baseline)


@dataclass(frozen=True)
class ShapeLayer:
    """One shape's random weights and the moefuse layer over them; with fp8 weights also the layer
    over their e4m3 quantisation with 128 x 128 block scales, the one measured."""

    w1: cp.ndarray
    w2: cp.ndarray
    layer: Any
    fp8: Any = None

    @property
    def measured(self) -> Any:
        return self.layer if self.fp8 is None else self.fp8


def shape_layer(moefuse: ModuleType, shape: Shape, dtype: Any, fp8: bool, max_tokens: int) -> ShapeLayer:
    """Random weights, the layer over them and with `fp8` the fp8 one (`quantize_weights`, block
    format), each with its workspace for `max_tokens` reserved (every path's: the unfused one's)."""
    w1, w2 = random_weights(shape, dtype)
    sl = ShapeLayer(w1, w2, moefuse.MoELayer(w1, w2, activation="swiglu"))
    if fp8:
        sl = dataclasses.replace(sl, fp8=expert_layer(moefuse, w1, w2, fp8=True))
    for layer in (sl.layer, sl.fp8):
        if layer is not None:
            layer.reserve(max_tokens, shape.k, fused_finalize=False)
    return sl


def case_mem_estimate(shape: Shape, T: int, sets: int, elem: int) -> int:
    """Generous: input sets + moefuse workspace + both baselines' intermediates."""
    inputs = sets * T * (shape.H * elem + shape.k * 8)
    work = 3 * T * shape.k * (shape.H * (2 * elem + 8) + 3 * shape.I * elem)
    return inputs + work + (256 << 20)


def check_case(
    case: Case, sl: ShapeLayer, session: Session, row: dict[str, Any]
) -> dict[str, Callable[[int], object]]:
    """Correctness, once per case (also the first, compiling, calls): the measured layer against
    the CuPy baseline, the others against the bf16 layer (with fp8 weights: fp8 against bf16, and
    the bf16 layer against CuPy as "err_bf16"). Returns run(i) of every baseline that works, by
    name (CuPy's first; with fp8 weights CuPy's is not timed)."""
    x, w, ids = case.sets[0]
    fused = sl.measured(x, w, ids, fused_finalize=True)
    row["err_unfused_vs_fused"] = rel_err(sl.measured(x, w, ids, fused_finalize=False), fused)
    reference = fused if sl.fp8 is None else sl.layer(x, w, ids, fused_finalize=True)
    runs: dict[str, Callable[[int], object]] = {}
    cupy_run = bl.cupy_baseline(sl.w1, sl.w2, case.shape.k, session.bf16_mm)
    try:
        expected = cupy_run(x, w, ids)
        row["err"] = rel_err(fused, expected)
        if sl.fp8 is None:
            runs["cupy"] = lambda i: cupy_run(*case.sets[i])
        else:
            row["err_bf16"] = rel_err(reference, expected)
    except Exception as e:
        row["notes"].append(f"cupy baseline failed: {short(e)}")
    if case.dtype == BF16 and not session.bf16_mm:
        row["notes"].append("cupy baseline upcasts to fp32 (CuPy refused bf16 matmul)")
    if session.baselines:
        try:
            tcase = bl.torch_case(case.shape, case.sets, sl.w1, sl.w2, session.stream)
        except Exception as e:
            row["notes"].append(f"torch baselines n/a ({short(e)})")
            tcase = None
        for b in session.baselines if tcase else ():
            try:
                run = bl.prepare(b, tcase)
                out = run(0)
                # The baseline runs on our non-blocking stream; its result is read after it
                # finishes (converting it on torch's default stream raced with it: errors of 1.0).
                session.stream.synchronize()
                row[f"err_{b.name}"] = rel_err(cp.from_dlpack(out.float()), reference)
                runs[b.name] = run
            except Exception as e:
                row["notes"].append(f"{b.name} n/a ({short(e)})")
        slow_grouped_mm = case.dtype != BF16 or session.gpu.cc.split(".")[0] not in ("9", "10")
        if slow_grouped_mm and any(b.grouped_mm and b.name in runs for b in session.baselines):
            row["notes"].append("torch._grouped_mm likely runs its per-group fallback here")
    bound, against = (WARN_REL_ERR, "moefuse") if sl.fp8 is None else (WARN_FP8_REL_ERR, "moefuse bf16")
    checks = {"err": ("moefuse vs cupy baseline", bound), "err_bf16": ("moefuse bf16 vs cupy", WARN_REL_ERR)}
    checks |= {f"err_{name}": (f"{name} vs {against}", bound) for name in runs if name != "cupy"}
    for key, (what, limit) in checks.items():
        if not row.get(key, 0.0) <= limit:  # NaN fails too
            log(f"  WARNING: {what}: relative error {row[key]:.3g} > {limit}")
    return runs


def compare(row: dict[str, Any], names: Iterable[str], floor_ms: float) -> None:
    """Each timed comparison's share of the floor ("pct_floor_NAME") and its time over moefuse's
    ("NAME_over_fused": above 1, moefuse is faster), into `row`."""
    for name in names:
        if ms := row.get(f"{name}_ms"):
            row[f"pct_floor_{name}"] = 100.0 * floor_ms / ms
            row[f"{name}_over_fused"] = ms / row["fused_ms"]


def run_case(case: Case, sl: ShapeLayer, session: Session, options: Options) -> dict[str, Any]:
    """One case's row: the checks, moefuse fused and unfused, the baselines, the floor, and with
    --stages the per-step times."""
    row: dict[str, Any] = {"case": case.name, "T": case.T, "notes": []}
    runs = check_case(case, sl, session, row)
    stream, timing = session.stream, options.timing

    def median(run: Callable[[int], object]) -> float:
        return median_ms(run, stream, timing, n_sets=len(case.sets), flush=session.flush)

    graph = options.graph_max_tokens >= case.T
    out = cp.empty((case.T, case.shape.H), dtype=case.dtype)
    for key, fused in (("fused_ms", True), ("unfused_ms", False)):
        run, mode = forward_runner(sl.measured, case.sets, stream, graph=graph, out=out, fused=fused)
        row[key] = median(run)
        row.setdefault("mode", mode)
    if sl.fp8 is not None and not options.no_baseline:  # the bf16 layer (fused), timed as fp8's
        bf16, _ = forward_runner(sl.layer, case.sets, stream, graph=graph, out=out, fused=True)
        runs = {"bf16": bf16, **runs}
    for name, run in runs.items() if not options.no_baseline else ():
        try:
            row[f"{name}_ms"] = median(run)
        except Exception as e:
            row[f"{name}_ms"] = None
            row["notes"].append(f"{name} timing failed: {short(e)}")
    t = row["fused_ms"] * 1e-3
    floor_s = session.ceilings.floor_seconds(case.flops, case.bytes)
    timed = [row[f"{name}_ms"] for name in runs if row.get(f"{name}_ms")]
    compare(row, runs, floor_s * 1e3)
    row.update(
        distinct_experts=case.distinct,
        flops=case.flops,
        bytes=case.bytes,
        tflops=case.flops / t / 1e12,
        gbps=case.bytes / t / 1e9,
        floor_ms=floor_s * 1e3,
        pct_floor=100.0 * floor_s / t,
        fused_over_unfused=row["fused_ms"] / row["unfused_ms"],
        speedup=min(timed) / row["fused_ms"] if timed else None,
    )
    if options.stages:
        steps, layer = {}, sl.measured
        for path, fused in (("fused", True), ("unfused", False)):
            samples = layer_step_samples(layer, case.sets[0], stream, timing, session.flush, fused=fused)
            steps[path] = medians(samples)
        row["stages"] = {f"{k} ({path})": v for path, times in steps.items() for k, v in times.items()}
        fused_s, store_s = steps["fused"], steps["unfused"]
        row["gemm2_fused_over_store"] = fused_s["gemm2"] / store_s["gemm2"]
        # issue 16's other bar: the fused path (its zeroing of out included) against store + finalize
        row["gemm2_fused_over_store_finalize"] = (fused_s["gemm2"] + fused_s.get("zero_out", 0.0)) / (
            store_s["gemm2"] + store_s["finalize"]
        )
    return row


def progress(row: dict[str, Any], names: list[str], label: str = "moefuse") -> str:
    """A measured case in one line: moefuse's time and share of the floor, each baseline's time."""
    times = "".join(f", {name} {row[f'{name}_ms']:.4f} ms" for name in names if row.get(f"{name}_ms"))
    return (
        f"{label} {row['fused_ms']:.4f} ms ({row['mode']}, {row['pct_floor']:.1f}% of floor){times}; "
        f"rel err vs cupy {fmt(row.get('err'), '.1e')}"
    )


def run_shape(
    shape: Shape, moefuse: ModuleType, session: Session, options: Options, counter: Iterator[str]
) -> list[dict[str, Any]]:
    """One layer per shape (two with fp8 weights): weights allocated here and freed before the
    next shape."""
    dtype, rows, fp8 = DTYPES[options.dtype], [], options.weights == "fp8"
    skews = (False, True) if options.skew else (False,)
    variants = [(T, s) for T in options.tokens for s in skews if not (s and T < 2)]

    def skip(T: int, skew: bool, why: str) -> None:
        name = shape.name + ("+skew" if skew else "")
        log(f"[{next(counter)}] {name} T={T}: skipped ({why})")
        rows.append({"case": name, "T": T, "skipped": why})

    free_pools()
    # fp8: the block-scaled copy, and the torch baseline's rowwise one (made per case)
    copies = 2 * expert_bytes(shape, 1, block_scales=True) if fp8 else 0
    per_expert = expert_bytes(shape, dtype.itemsize) + copies
    need, free = shape.E * per_expert, cp.cuda.runtime.memGetInfo()[0]
    if need + 2 * GiB > free:
        for T, skew in variants:
            skip(T, skew, f"weights need {need / GiB:.1f} + 2 GiB, {free / GiB:.1f} GiB free")
        return rows
    try:
        sl = shape_layer(moefuse, shape, dtype, fp8, max(options.tokens))
    except Exception as e:
        for T, skew in variants:
            skip(T, skew, f"layer setup failed: {short(e)}")
        return rows
    for T, skew in variants:
        name = shape.name + ("+skew" if skew else "")
        free_pools()
        need = case_mem_estimate(shape, T, options.sets, dtype.itemsize)
        if need > cp.cuda.runtime.memGetInfo()[0]:
            skip(T, skew, f"needs ~{need / GiB:.1f} GiB free device memory")
            continue
        where = f"[{next(counter)}] {name} T={T}"
        try:
            case = make_case(
                shape, T, dtype=dtype, n_sets=options.sets, skew=skew, seed=options.seed, fp8=fp8
            )
            row = run_case(case, sl, session, options)
            names = ["bf16" if fp8 else "cupy", *(b.name for b in session.baselines)]
            log(f"{where}: {progress(row, names, 'moefuse fp8' if fp8 else 'moefuse')}")
        except Exception as e:
            log(f"{where}: failed: {short(e, 300)}")
            row = {"case": name, "T": T, "failed": short(e)}
        rows.append(row)
    del sl
    free_pools()
    return rows


def run(options: Options, moefuse: ModuleType, command: str) -> tuple[Meta, list[dict[str, Any]]]:
    """The whole benchmark, on one non-blocking stream: (meta, rows)."""
    cp.random.seed(options.seed)
    stream = cp.cuda.Stream(non_blocking=True)
    fp8 = options.weights == "fp8"
    found, skipped = ([], []) if options.no_baseline else bl.installed(fp8)
    for note in skipped:
        log(f"baseline {note}")
    with stream:  # everything, CuPy, moefuse and torch, runs on this one stream
        gpu, gpu_start = gpu_info(moefuse), gpu_state()
        log(f"GPU: {gpu.name}; {gpu_start}; measuring ceilings ...")
        bf16_mm = ceil.probe_bf16_matmul()
        ceilings = ceil.measure(stream, options.timing.rest, bf16_mm, fp8)
        free_pools()
        session = Session(stream, gpu, ceilings, bf16_mm, L2Flush(stream), found)
        total = len(options.shapes) * sum(1 + (options.skew and T >= 2) for T in options.tokens)
        counter = (f"{i}/{total}" for i in itertools.count(1))
        rows = [row for s in options.shapes for row in run_shape(s, moefuse, session, options, counter)]
        gpu_end = gpu_state()  # right after the last case: the clocks and heat under load
        log(f"GPU at the end: {gpu_end}")
        flush_mib = session.flush.nbytes >> 20
        del session
    t = options.timing
    timed = {} if options.no_baseline else {"cupy": "per-expert cuBLAS loop through CuPy"}
    if fp8 and timed:
        timed = {"bf16": "moefuse's bf16 layer on the unquantised weights, fused finalize, timed as fp8"}
    for b in found:
        version = getattr(sys.modules.get(b.package), "__version__", "not importable")
        timed[b.name] = f"{b.what} ({b.package} {version})"
    meta = Meta(
        date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        command=command,
        gpu=gpu,
        ceilings=ceilings,
        dtype=options.dtype,
        weights=options.weights,
        torch=getattr(sys.modules.get("torch"), "__version__", None),
        timing=f"CUDA events, median of <= {t.reps} reps after {t.warmup} warm-ups over "
        f"{options.sets} rotating input sets; L2 flushed by a {flush_mib} MiB memset before each "
        f"rep (outside the events); moefuse as CUDA-graph replays for T <= {options.graph_max_tokens}; "
        f"{t.rest:g} s idle before each measurement",
        baselines=timed,
        skipped_baselines=skipped,
        gpu_start=gpu_start,
        gpu_end=gpu_end,
    )
    return meta, rows
