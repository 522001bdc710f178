"""A/B of the Hopper tile choice on whole forwards, in one process on one GPU.

    python tools/ab_tiles.py --cases qwen3:16,mixtral:1024 --variants rows,swapped,m64n128

A variant forces a Hopper kernel family, `rows` (row-major tiles as the heuristics choose them),
`swapped` (narrow tiles) or `wide` (swapped, wide tiles), or the row-major M tile (m64 / m128)
and optionally a single BN (n128, ...). Rounds alternate between the variants; every forward is
timed after an L2 flush, as a CUDA-graph replay for T <= 128 (--graph-max-tokens). Prints each
case's median ms per variant and its ratio to the first variant; outputs must agree with the first
variant's.
"""

from __future__ import annotations

import argparse
import statistics

import cupy as cp
from forward_once import force_family, random_problem, time_steps  # tools/ is first on sys.path

import moefuse
from moefuse import heuristics
from moefuse.backends import Sm90

SHAPES = {"mixtral": (4096, 14336, 8, 2), "deepseek": (7168, 2048, 256, 8), "qwen3": (2048, 768, 128, 8)}
# what force() and forward_once.force_family patch, restored after each variant
PATCHED = (
    (heuristics, "choose_sm90_tile_m"),
    (Sm90, "tile_widths"),
    (heuristics, "choose_sm90_swapped"),
    (heuristics, "choose_sm90_swapped_tiles"),
    (heuristics, "wide_tiles_busiest_limit"),
)


def force(variant: str) -> None:
    force_family(variant if variant in ("swapped", "wide") else "rows")
    if variant in ("swapped", "wide", "rows"):  # rows: the row-major kernels with the heuristics' tiles
        return
    tile_m, _, bn = variant[1:].partition("n")
    heuristics.choose_sm90_tile_m = lambda *_: int(tile_m)
    widths = Sm90.tile_widths
    Sm90.tile_widths = (lambda self, m: (int(bn),)) if bn else widths


def time_case(shape: str, num_tokens: int, variants: list[str], args) -> dict[str, dict[str, float]]:
    hidden, inter, experts, top_k = SHAPES[shape] if shape in SHAPES else (int(v) for v in shape.split("x"))
    layer, x, weights, ids = random_problem(hidden, inter, experts, top_k, num_tokens, args.skew)
    flush = cp.empty(256 << 20, dtype=cp.uint8)
    cp.cuda.Device().synchronize()  # the inputs were made on the legacy stream
    stream = cp.cuda.Stream(non_blocking=True)
    samples: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    reference = None
    original = [getattr(owner, name) for owner, name in PATCHED]
    paths = ((None, ""), (False, " (store)")) if args.store else ((None, ""),)  # fused_finalize
    with stream:
        for _ in range(args.rounds):
            for variant in variants:
                force(variant)
                out = layer(x, weights, ids)
                result = out.astype(cp.float32)
                reference = result if reference is None else reference
                diff = float(cp.linalg.norm(result - reference) / cp.linalg.norm(reference))
                assert diff < 1e-2, f"{variant}: output differs from {variants[0]}'s by {diff:.3g}"
                graph = None
                if num_tokens <= args.graph_max_tokens:
                    stream.begin_capture()
                    layer(x, weights, ids, out=out)
                    graph = stream.end_capture()
                for _ in range(args.reps):
                    if args.steps and not graph:
                        for fused, suffix in paths:
                            flush.fill(0)
                            for name, ms in time_steps(layer, x, weights, ids, out, stream, fused).items():
                                samples[variant].setdefault(name + suffix, []).append(ms)
                        continue
                    flush.fill(0)
                    start, end = cp.cuda.Event(), cp.cuda.Event()
                    start.record(stream)
                    if graph:
                        graph.launch(stream)
                    else:
                        layer(x, weights, ids, out=out)
                    end.record(stream)
                    end.synchronize()
                    samples[variant].setdefault("forward", []).append(cp.cuda.get_elapsed_time(start, end))
                for (owner, name), value in zip(PATCHED, original, strict=True):
                    setattr(owner, name, value)
    medians = {v: {name: statistics.median(t) for name, t in steps.items()} for v, steps in samples.items()}
    for steps in medians.values():
        steps.setdefault("forward", sum(t for name, t in steps.items() if not name.endswith("(store)")))
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", default="qwen3:16,qwen3:1024", help="shape:T (shape: a name or HxIxExk)")
    parser.add_argument("--variants", default="rows,swapped", help="rows, swapped, wide, or m64 / m128 [nBN]")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", action="store_true", help="also time each step (eager cases)")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--skew", action="store_true", help="bench.py's skewed routing")
    parser.add_argument("--store", action="store_true", help="with --steps: also the unfused steps")
    parser.add_argument("--graph-max-tokens", type=int, default=128, help="CUDA-graph replays up to this T")
    args = parser.parse_args()
    variants = args.variants.split(",")
    print(moefuse.gpu_name())
    for case in args.cases.split(","):
        shape, tokens = case.split(":")
        ms = time_case(shape, int(tokens), variants, args)
        base = ms[variants[0]]["forward"]
        cells = "  ".join(f"{v} {m['forward']:.4f} ms ({m['forward'] / base:.3f})" for v, m in ms.items())
        print(f"{shape:9} T={int(tokens):6}  {cells}")
        if args.steps:
            for v, m in ms.items():
                print(" " * 18 + f"{v}: " + "  ".join(f"{n} {t:.4f}" for n, t in m.items() if n != "forward"))


if __name__ == "__main__":
    main()
