"""A/B of the weight layouts on whole forwards, in one process on one GPU: the same experts stored
the standard way (w1 [E, 2I, H] gate rows then up rows, w2 [E, H, I]) and as transformers' models
store them (interleaved gate/up rows; transposed [E, H, 2I] / [E, I, H]; both: gpt-oss).

    python tools/ab_layouts.py --shape 2880x2880x32x4 --tokens 1,16,128,1024,4096

Every forward is timed after an L2 flush, as a CUDA-graph replay for T <= 128
(--graph-max-tokens); rounds alternate between the layouts. Prints each case's median ms per
layout and its ratio to the standard layout; outputs must agree with the standard layout's.
"""

from __future__ import annotations

import argparse

import cupy as cp

import moefuse
from moefuse_bench.dtypes import rel_err
from moefuse_bench.problems import DTYPES, LAYOUTS, make_case, random_weights, stored_as
from moefuse_bench.shapes import Shape, parse_shape, parse_tokens
from moefuse_bench.timing import L2Flush, Timing, event_samples, forward_runner, medians


def time_layouts(shape: Shape, tokens: list[int], layouts: list[str], args) -> dict[int, dict[str, float]]:
    w1, w2 = random_weights(shape, DTYPES["bf16"])
    layers = {}
    for name in layouts:
        layers[name] = moefuse.MoELayer(*stored_as(w1, w2, **LAYOUTS[name]), **LAYOUTS[name])
    del w1, w2
    stream = cp.cuda.Stream(non_blocking=True)
    flush = L2Flush(stream)
    timing = Timing(reps=args.reps, warmup=1)
    results = {}
    for num_tokens in tokens:
        inputs = make_case(shape, num_tokens, dtype=DTYPES["bf16"]).sets[0]
        graph = num_tokens <= args.graph_max_tokens
        samples: dict[str, dict[str, list[float]]] = {name: {} for name in layouts}
        with stream:
            out = cp.empty((num_tokens, shape.H), dtype=DTYPES["bf16"])
            reference = layers[layouts[0]](*inputs).copy()
            for _ in range(args.rounds):
                for name in layouts:
                    diff = rel_err(layers[name](*inputs, out=out), reference)
                    assert diff < 1e-2, f"{name}: output differs from {layouts[0]}'s by {diff:.3g}"
                    run, _ = forward_runner(layers[name], [inputs], stream, graph=graph, out=out)
                    samples[name].setdefault("forward", []).extend(
                        event_samples(run, stream, timing, flush=flush)
                    )
        results[num_tokens] = {name: medians(s)["forward"] for name, s in samples.items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="2880x2880x32x4", help="a name or HxIxExk (default: gpt-oss-20b)")
    parser.add_argument("--tokens", default="1,16,128,1024,4096")
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"of {', '.join(LAYOUTS)}; the first is the base"
    )
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--graph-max-tokens", type=int, default=128, help="CUDA-graph replays up to this T")
    args = parser.parse_args()
    layouts = args.layouts.split(",")
    try:
        shape, tokens = parse_shape(args.shape), parse_tokens(args.tokens)
        unknown = set(layouts) - set(LAYOUTS)
        if unknown:
            raise ValueError(f"unknown layouts {sorted(unknown)}: choose from {list(LAYOUTS)}")
    except ValueError as e:
        parser.error(str(e))
    print(moefuse.gpu_name(), shape)
    for num_tokens, ms in time_layouts(shape, tokens, layouts, args).items():
        base = ms[layouts[0]]
        cells = "  ".join(f"{name} {t:.4f} ms ({t / base:.3f})" for name, t in ms.items())
        print(f"T={num_tokens:6}  {cells}")


if __name__ == "__main__":
    main()
