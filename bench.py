"""Benchmark moefuse's MoE expert layer against the GPU's ceilings and the baselines installed.

Method (the shared DESIGN.md, section 7): FLOPs = 2*T*k*H*2I + 2*T*k*I*H; bytes = weights of the experts hit
(3*H*I elements each) + x + out. The ceilings (a cuBLAS 8192^3 matmul through CuPy, a 1 GiB
device-to-device copy counting read + write) are measured in the same run; a case's floor is
max(FLOPs / matmul ceiling, bytes / copy ceiling) and "%floor" = floor / measured time.
Times are medians of CUDA-event timings after warm-up; before each repetition, outside its
events, L2 is flushed by a memset, and repetitions rotate over several input sets. For small T
moefuse is timed as CUDA-graph replays (CuPy refuses cuBLAS during capture, so baselines are not).
--weights fp8 (issue 16) times moefuse's layer over the same random weights quantised to e4m3 with
fp32 scales per 128 x 128 block (moefuse.fp8.quantize_weights; x stays bf16) against its bf16
layer and torch._scaled_grouped_mm written out (rowwise fp8, unfused), each checked against the
bf16 output; the matmul ceiling is then torch._scaled_mm's e4m3 8192^3 (the bf16 one, said in the
header, where torch cannot run it) and the bytes are the fp8 weights hit + their scales + x + out.
bf16 conversions, SwiGLU and row gathers run on uint16 views through small ElementwiseKernels, so
only cupy.matmul must know the bfloat16 dtype; if it does not, the CuPy baseline upcasts to fp32.
Baselines besides CuPy's, each where installed (none is a dependency; an absent one is skipped
with a note): torch._grouped_mm, transformers' "grouped_mm" experts, vLLM's and SGLang's
fused_experts, FlashInfer's CUTLASS fused MoE (moefuse_bench/baselines.py). The GPU's clocks,
power and temperature (NVML) are reported at the start and the end; stderr has a line per case;
--plot FILE.png draws TFLOP/s and GB/s against T per shape and implementation (needs matplotlib).

The measuring lives in the moefuse_bench package (timing, ceilings, baselines, report); this is
its command line. Exit status: 0 measured, 1 CuPy or moefuse does not import, 2 usage error,
3 no usable GPU (the message says what was found and what is needed).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys

from moefuse_bench.device import log, no_gpu_error, short
from moefuse_bench.plot import missing as missing_plotter
from moefuse_bench.shapes import NAMES_HELP, SHAPES, parse_shapes, parse_tokens

EXIT_NO_GPU = 3  # no usable GPU: nothing to measure (argparse exits with 2 on a usage error)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    add = p.add_argument
    shape_help = f"{NAMES_HELP}; repeat or comma-separate (default mixtral)"
    add("--shape", action="append", default=[], help=shape_help)
    add("--tokens", default="1,16,128,1024,4096", help="comma-separated token counts T")
    add("--dtype", choices=("bf16", "fp16"), default="bf16")
    weights_help = "fp8: e4m3 weights with 128 x 128 block scales (x stays --dtype)"
    add("--weights", choices=("bf16", "fp8"), default="bf16", help=weights_help)
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
    add("--plot", metavar="FILE.png", help="also draw TFLOP/s and GB/s against T per shape (matplotlib)")
    add("--stages", action="store_true", help="also time each step of the forward (plan, GEMMs, ...)")
    add("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        args.shapes = parse_shapes(args.shape) or [SHAPES["mixtral"]]
        args.tokens = parse_tokens(args.tokens)
    except ValueError as e:
        p.error(str(e))
    if args.sets < 1 or args.reps < 1:
        p.error("--sets and --reps must be positive")
    if args.plot and (why := missing_plotter()):
        p.error(why)  # before anything is measured
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import cupy  # noqa: F401 - imported here to report a broken CuPy as such

        import moefuse
    except Exception as e:
        print(f"bench.py: cannot import CuPy or moefuse: {short(e, 300)}", file=sys.stderr)
        return 1
    error = no_gpu_error()
    if error:
        print(f"bench.py: nothing to measure, {error}", file=sys.stderr)
        return EXIT_NO_GPU
    from moefuse_bench.report import report
    from moefuse_bench.runner import Options, run
    from moefuse_bench.timing import Timing

    timing = Timing(reps=args.reps, warmup=args.warmup, max_seconds=args.max_seconds, rest=args.rest)
    # every other option has the name of the command line's
    chosen = {f.name: getattr(args, f.name) for f in dataclasses.fields(Options) if f.name != "timing"}
    options = Options(**chosen, timing=timing)
    meta, rows = run(options, moefuse, shlex.join(["python", *sys.argv]))
    print(report(meta, rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"meta": meta.to_json(), "results": rows}, f, indent=2, default=str)
        log(f"wrote {args.json}")
    if args.plot:
        from moefuse_bench.plot import plot

        plot(meta, rows, args.plot)
        log(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
