"""A/B of the Hopper tile choice on whole forwards, in one process on one GPU.

    python tools/ab_tiles.py --cases qwen3:16,mixtral:1024 --variants rows,swapped,m64n128

A variant forces a Hopper kernel family, `rows` (row-major tiles as the heuristics choose them),
`swapped` (narrow tiles) or `wide` (swapped, wide tiles), or the row-major M tile (m64 / m128)
and optionally a single BN (n128, ...), through `moefuse.override`. Rounds alternate between the
variants; every forward is timed after an L2 flush, as a CUDA-graph replay for T <= 128
(--graph-max-tokens). Prints each case's median ms per variant and its ratio to the first
variant; outputs must agree with the first variant's.
"""

from __future__ import annotations

import argparse

import cupy as cp

import moefuse
from moefuse_bench.dtypes import rel_err
from moefuse_bench.problems import random_problem
from moefuse_bench.shapes import Shape, parse_shape
from moefuse_bench.timing import L2Flush, Timing, event_samples, forward_runner, layer_step_samples, medians
from moefuse_bench.variants import VARIANTS_HELP, variant_override


def time_case(shape: Shape, num_tokens: int, variants: list[str], args) -> dict[str, dict[str, float]]:
    """Per variant, the median ms of the forward (and with --steps, of each step)."""
    layer, case = random_problem(shape, num_tokens, skew=args.skew)
    inputs = case.sets[0]
    stream = cp.cuda.Stream(non_blocking=True)
    flush = L2Flush(stream)
    timing = Timing(reps=args.reps, warmup=1)
    graph = num_tokens <= args.graph_max_tokens
    samples: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    reference = None
    paths = ((None, ""), (False, " (store)")) if args.store else ((None, ""),)  # fused_finalize
    with stream:
        out = cp.empty((num_tokens, shape.H), dtype=case.dtype)
        for _ in range(args.rounds):
            for variant in variants:
                with moefuse.override(**variant_override(variant)):
                    output = layer(*inputs, out=out).copy()
                    reference = output if reference is None else reference
                    diff = rel_err(output, reference)
                    assert diff < 1e-2, f"{variant}: output differs from {variants[0]}'s by {diff:.3g}"
                    if args.steps and not graph:
                        for fused, suffix in paths:
                            steps = layer_step_samples(layer, inputs, stream, timing, flush, fused=fused)
                            for name, ms in steps.items():
                                samples[variant].setdefault(name + suffix, []).extend(ms)
                        continue
                    run, _ = forward_runner(layer, [inputs], stream, graph=graph, out=out)
                    ms = event_samples(run, stream, timing, flush=flush)
                    samples[variant].setdefault("forward", []).extend(ms)
    per_variant = {v: medians(steps) for v, steps in samples.items()}
    for steps in per_variant.values():  # with --steps, the forward is the sum of its steps
        steps.setdefault("forward", sum(t for name, t in steps.items() if not name.endswith("(store)")))
    return per_variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="qwen3:16,qwen3:1024", help="shape:T (shape: a name or HxIxExk)")
    parser.add_argument("--variants", default="rows,swapped", help=VARIANTS_HELP)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", action="store_true", help="also time each step (eager cases)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--skew", action="store_true", help="bench.py's skewed routing")
    parser.add_argument("--store", action="store_true", help="with --steps: also the unfused steps")
    parser.add_argument("--graph-max-tokens", type=int, default=128, help="CUDA-graph replays up to this T")
    args = parser.parse_args()
    variants = args.variants.split(",")
    cases = []
    try:
        for v in variants:
            variant_override(v)
        for case in args.cases.split(","):
            shape, _, tokens = case.partition(":")
            cases.append((parse_shape(shape), int(tokens)))
    except ValueError as e:
        parser.error(str(e))
    print(moefuse.gpu_name())
    for shape, tokens in cases:
        ms = time_case(shape, tokens, variants, args)
        base = ms[variants[0]]["forward"]
        cells = "  ".join(f"{v} {m['forward']:.4f} ms ({m['forward'] / base:.3f})" for v, m in ms.items())
        print(f"{shape.name:9} T={tokens:6}  {cells}")
        if args.steps:
            for v, m in ms.items():
                print(" " * 18 + f"{v}: " + "  ".join(f"{n} {t:.4f}" for n, t in m.items() if n != "forward"))


if __name__ == "__main__":
    main()
