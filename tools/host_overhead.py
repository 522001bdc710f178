"""Host time of one eager forward: what Python spends issuing a MoELayer call's launches.

    python tools/host_overhead.py [--shape H,I,E,k|HxIxExk|name] [--tokens 1024] [--calls 300] [--profile]

Times `calls` back-to-back forwards on the host (no sync between them) against the GPU time of
the same forward replayed from a CUDA graph (median of `calls` replays); where the host time is
the larger, eager forwards are host-bound. `--profile` adds the functions that take the host time
(cProfile, by own time).
"""

from __future__ import annotations

import cProfile
import pstats

import cupy as cp

from moefuse_bench.problems import random_problem
from moefuse_bench.shapes import tool_parser
from moefuse_bench.timing import Timing, capture, host_seconds, median_ms, warm_up


def main() -> None:
    parser = tool_parser(__doc__, "1032,712,60,4", 1024)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    layer, case = random_problem(args.shape, args.tokens)
    x, weights, ids = case.sets[0]
    out = cp.empty((args.tokens, args.shape.H), dtype=x.dtype)
    stream = cp.cuda.Stream(non_blocking=True)

    def forward(_: int = 0) -> None:
        layer(x, weights, ids, out=out)

    with stream:
        warm_up(forward, stream, 10)
        host = host_seconds(forward, stream, args.calls)
        graph = capture(stream, forward)
        gpu = median_ms(lambda _: graph.launch(stream), stream, Timing(reps=args.calls, warmup=1)) / 1e3
        print(f"{args.shape.name} T={args.tokens}: host {host * 1e6:.1f} us per call, GPU {gpu * 1e6:.1f} us")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.calls):
                forward()
            profile.disable()
            stream.synchronize()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
