"""A/B timing of kernel-source variants against the current one, in one process on one GPU.

    python tools/ab_kernel.py cuda_src/sm90/variant.cu [more.cu ...] [--module sm90_grouped_gemm_m128_bf16]
        [--shape mixtral|H,I,E,k|HxIxExk] [--tokens 4096] [--rounds 5] [--reps 10]
        [--family auto|rows|swapped|wide]

A variant must define the same entry points (`moefuse.override(sources=...)` loads it in place of
the module's source). Rounds cycle through the sources; each reports the median ms of every
forward step (MoELayer.steps), so machine drift hits all alike. Prints a table: step, current,
then each variant's ms and its ratio to current.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import cupy as cp

import moefuse
from moefuse import _sources
from moefuse_bench.dtypes import rel_err
from moefuse_bench.problems import random_problem
from moefuse_bench.shapes import tool_parser
from moefuse_bench.timing import L2Flush, Timing, layer_step_samples, medians
from moefuse_bench.variants import add_family_argument, family_override, forced


def main() -> None:
    parser = tool_parser(__doc__, "mixtral", 4096)
    parser.add_argument("variants", type=Path, nargs="+")
    parser.add_argument("--module", default="sm90_grouped_gemm_m128_bf16", choices=sorted(_sources.MODULES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    add_family_argument(parser)
    args = parser.parse_args()
    root = _sources.source_root()
    # keyed by source path: two variants of one file name in different folders stay apart
    variants = [str(v.resolve().relative_to(root)) for v in args.variants]
    family = family_override(args.family)
    overrides = {"current": family, **{v: {**family, "sources": {args.module: v}} for v in variants}}

    layer, case = random_problem(args.shape, args.tokens)
    stream = cp.cuda.Stream(non_blocking=True)
    flush = L2Flush(stream)
    timing = Timing(reps=args.reps, warmup=1)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in overrides}
    outputs = {}
    for _ in range(args.rounds):
        for name, override in overrides.items():
            with stream, forced(**override):
                outputs[name] = layer(*case.sets[0])
                results[name].append(medians(layer_step_samples(layer, case.sets[0], stream, timing, flush)))
    diffs = [f"{Path(v).stem} {rel_err(outputs[v], outputs['current']):.2e}" for v in variants]
    print(
        f"{moefuse.gpu_name()}  shape {args.shape.name}  T={args.tokens}",
        f"rel diff of outputs: {', '.join(diffs)}",
    )
    print(
        f"{'step':10} {'current ms':>11}"
        + "".join(f" {Path(v).stem[:14]:>14} {'ratio':>6}" for v in variants)
    )
    for step in results["current"][0]:
        cur = statistics.median(r[step] for r in results["current"])
        row = f"{step:10} {cur:11.4f}"
        for name in variants:
            var = statistics.median(r[step] for r in results[name])
            row += f" {var:14.4f} {var / cur:6.3f}"
        print(row)


if __name__ == "__main__":
    main()
