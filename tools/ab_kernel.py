"""A/B timing of kernel-source variants against the current one, in one process on one GPU.

    python tools/ab_kernel.py cuda_src/sm90/variant.cu [more.cu ...] [--module sm90_grouped_gemm_m128]
        [--shape H,I,E,k] [--tokens 4096] [--rounds 5] [--reps 10] [--family auto|rows|swapped]

A variant must define the same entry points (it is loaded in place of the module's source).
Rounds cycle through the sources; each reports the median ms of every forward step
(MoELayer.steps), so machine drift hits all alike. Prints a table: step, current, then each
variant's ms and its ratio to current.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import cupy as cp
from forward_once import (
    add_family_argument,
    force_family,
    random_problem,
    time_steps,
)  # tools/ first on sys.path

import moefuse
from moefuse import _cache, _sources


def step_times(layer, x, weights, ids, reps: int, flush) -> dict[str, float]:
    time_steps(layer, x, weights, ids)  # warm-up
    samples: dict[str, list[float]] = {}
    for _ in range(reps):
        flush()
        for name, ms in time_steps(layer, x, weights, ids).items():
            samples.setdefault(name, []).append(ms)
    return {name: statistics.median(v) for name, v in samples.items()}


def use_source(module: str, source: str) -> None:
    _sources.MODULES[module] = source
    _cache.forget(module)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variants", type=Path, nargs="+")
    parser.add_argument("--module", default="sm90_grouped_gemm_m128")
    parser.add_argument("--shape", default="4096,14336,8,2", help="H,I,E,k")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    add_family_argument(parser)
    args = parser.parse_args()
    force_family(args.family)
    hidden, inter, experts, top_k = (int(v) for v in args.shape.split(","))
    root = _sources.source_root()
    # keyed by source path: two variants of one file name in different folders stay apart
    variants = [str(v.resolve().relative_to(root)) for v in args.variants]
    sources = {"current": _sources.MODULES[args.module], **{v: v for v in variants}}

    layer, x, weights, ids = random_problem(hidden, inter, experts, top_k, args.tokens)
    scratch = cp.empty(256 << 20, dtype=cp.uint8)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sources}
    outputs = {}
    for _ in range(args.rounds):
        for name, source in sources.items():
            use_source(args.module, source)
            outputs[name] = layer(x, weights, ids).astype(cp.float32)
            results[name].append(step_times(layer, x, weights, ids, args.reps, lambda: scratch.fill(0)))
    reference = cp.linalg.norm(outputs["current"])
    diffs = [
        f"{Path(v).stem} {float(cp.linalg.norm(outputs[v] - outputs['current']) / reference):.2e}"
        for v in variants
    ]
    print(
        f"{moefuse.gpu_name()}  shape H,I,E,k={args.shape}  T={args.tokens}",
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
