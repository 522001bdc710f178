"""Host time of one eager forward: what Python spends issuing a MoELayer call's launches.

    python tools/host_overhead.py [--shape H,I,E,k] [--tokens 1024] [--calls 300] [--profile]

Times `calls` back-to-back forwards on the host (no sync between them) against the GPU time of
the same forwards replayed from a CUDA graph; where the host time is the larger, eager forwards are
host-bound. `--profile` adds the functions that take the host time (cProfile, by own time).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time

import cupy as cp
from forward_once import random_problem  # tools/ is first on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="1032,712,60,4", help="H,I,E,k")
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    hidden, inter, experts, top_k = (int(v) for v in args.shape.split(","))
    layer, x, weights, ids = random_problem(hidden, inter, experts, top_k, args.tokens)
    out = layer(x, weights, ids)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        for _ in range(10):
            layer(x, weights, ids, out=out)
        stream.synchronize()
        start = time.perf_counter()
        for _ in range(args.calls):
            layer(x, weights, ids, out=out)
        host = (time.perf_counter() - start) / args.calls
        stream.synchronize()
        stream.begin_capture()
        layer(x, weights, ids, out=out)
        graph = stream.end_capture()
        graph.launch(stream)
        first, last = cp.cuda.Event(), cp.cuda.Event()
        first.record(stream)
        for _ in range(args.calls):
            graph.launch(stream)
        last.record(stream)
        last.synchronize()
        gpu = cp.cuda.get_elapsed_time(first, last) / args.calls / 1e3
        case = f"H,I,E,k={args.shape} T={args.tokens}"
        print(f"{case}: host {host * 1e6:.1f} us per call, GPU {gpu * 1e6:.1f} us")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(args.calls):
                layer(x, weights, ids, out=out)
            profile.disable()
            stream.synchronize()
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
