"""Run a few forwards of one shape (for profilers: ncu --kernel-name ... python3 tools/forward_once.py).

python tools/forward_once.py --shape H,I,E,k --tokens T [--iters 2] [--unfused] [--family swapped]

Also the setup the A/B scripts share: the random problem, the kernel-family switch, per-step timing.
"""

import argparse
import sys
from pathlib import Path

import cupy as cp
import ml_dtypes
import numpy as np

import moefuse
from moefuse import heuristics

sys.path.append(str(Path(__file__).resolve().parents[1]))  # bench.py, for its routing
from bench import make_routing


def random_problem(hidden: int, inter: int, experts: int, top_k: int, num_tokens: int, skew: bool = False):
    """(layer, x, topk_weights, topk_ids): random bf16 weights and tokens, each token routed to
    top_k distinct experts with equal weights; with `skew`, bench.py's skewed routing (the first
    half of the tokens put expert 0 in slot 0). Made on the current stream."""
    rng = np.random.default_rng(0)

    def randn(*shape, scale=1.0):
        return (cp.random.standard_normal(shape, dtype=cp.float32) * scale).astype(ml_dtypes.bfloat16)

    layer = moefuse.MoELayer(
        randn(experts, 2 * inter, hidden, scale=hidden**-0.5),
        randn(experts, hidden, inter, scale=inter**-0.5),
    )
    x = randn(num_tokens, hidden)
    ids = cp.asarray(make_routing(rng, num_tokens, experts, top_k, skew))
    weights = cp.full((num_tokens, top_k), 1.0 / top_k, dtype=cp.float32)
    return layer, x, weights, ids


FAMILIES = ("auto", "rows", "swapped", "wide")


def add_family_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--family", choices=FAMILIES, default="auto", help="Hopper kernels")


def force_family(family: str) -> None:
    """Run the Hopper row-major kernels, or the swapped ones with narrow (128 x 256) or wide
    (256 x 192) tiles, at every size ("auto": the heuristics decide)."""
    if family != "auto":
        tiles = heuristics.SWAPPED_WIDE if family == "wide" else heuristics.SWAPPED_NARROW
        heuristics.choose_sm90_swapped = lambda *_: family != "rows"
        heuristics.choose_sm90_swapped_tiles = lambda *_: tiles
        heuristics.wide_tiles_busiest_limit = lambda *_: None


def time_steps(layer, x, weights, ids, out=None, stream=None, fused_finalize=None) -> dict[str, float]:
    """ms of each step of one eager forward (plan, gemm1, gemm2, ...), events between them, on
    `stream` (default: the current one)."""
    _, steps = layer.steps(x, weights, ids, out=out, fused_finalize=fused_finalize)
    events = [cp.cuda.Event() for _ in range(len(steps) + 1)]
    events[0].record(stream)
    for (_, launch), event in zip(steps, events[1:], strict=True):
        launch()
        event.record(stream)
    events[-1].synchronize()
    return {
        name: cp.cuda.get_elapsed_time(a, b)
        for (name, _), a, b in zip(steps, events[:-1], events[1:], strict=True)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="4096,14336,8,2", help="H,I,E,k")
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--unfused", action="store_true")
    add_family_argument(parser)
    args = parser.parse_args()
    force_family(args.family)
    hidden, inter, experts, top_k = (int(v) for v in args.shape.split(","))
    layer, x, weights, ids = random_problem(hidden, inter, experts, top_k, args.tokens)
    for _ in range(args.iters):
        layer(x, weights, ids, fused_finalize=not args.unfused)
    cp.cuda.Device().synchronize()


if __name__ == "__main__":
    main()
