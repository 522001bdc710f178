"""SM clock, power and throughput of a short burst vs sustained load, for cuBLAS and a moefuse forward.

    python tools/sustained_clocks.py [--shape H,I,E,k] [--tokens T]

bench.py's matmul ceiling is a burst of 20 cuBLAS 8192^3 products from an idle GPU; a large MoE
forward runs long enough for the power cap to lower the clock. This times both ways, sampling
`nvidia-smi` every 20 ms, and prints each phase's median time, TFLOP/s, mean SM clock, mean power
and the clock-event reasons seen (0x4: software power cap).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time
from datetime import datetime

import cupy as cp
import ml_dtypes
from forward_once import random_problem  # tools/ is first on sys.path

QUERY = "timestamp,clocks.sm,power.draw,clocks_event_reasons.active"


def timed(fn, reps: int, stream) -> tuple[float, float, float]:
    """(t0, t1, median ms) of `reps` calls of fn after 3 warm-ups, from an idle GPU."""
    stream.synchronize()
    time.sleep(1.5)
    t0 = time.time()
    for _ in range(3):
        fn()
    events = []
    for _ in range(reps):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record(stream)
        fn()
        end.record(stream)
        events.append((start, end))
    stream.synchronize()
    return t0, time.time(), statistics.median(cp.cuda.get_elapsed_time(a, b) for a, b in events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", default="4096,14336,8,2", help="H,I,E,k")
    parser.add_argument("--tokens", type=int, default=16384)
    args = parser.parse_args()
    hidden, inter, experts, top_k = (int(v) for v in args.shape.split(","))
    sampler = subprocess.Popen(
        ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    stream = cp.cuda.Stream(non_blocking=True)
    phases = []
    with stream:
        n = 8192
        a = cp.random.standard_normal((n, n), dtype=cp.float32).astype(ml_dtypes.bfloat16)
        b = cp.random.standard_normal((n, n), dtype=cp.float32).astype(ml_dtypes.bfloat16)
        layer, x, weights, ids = random_problem(hidden, inter, experts, top_k, args.tokens)
        out = cp.empty((args.tokens, hidden), dtype=x.dtype)
        forward_flops = 6 * args.tokens * top_k * hidden * inter
        for name, fn, flops, reps in (
            ("cuBLAS 8192^3, 20 reps", lambda: cp.matmul(a, b), 2 * n**3, 20),
            ("cuBLAS 8192^3, 300 reps", lambda: cp.matmul(a, b), 2 * n**3, 300),
            ("moefuse forward, 10 reps", lambda: layer(x, weights, ids, out=out), forward_flops, 10),
            ("moefuse forward, 60 reps", lambda: layer(x, weights, ids, out=out), forward_flops, 60),
        ):
            phases.append((name, flops, *timed(fn, reps, stream)))
    sampler.terminate()
    samples = []
    for line in sampler.communicate()[0].splitlines():
        stamp, mhz, watts, reasons = (f.strip() for f in line.split(","))
        when = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
        samples.append((when, float(mhz), float(watts), reasons))
    print(f"shape H,I,E,k={args.shape} T={args.tokens}")
    print(f"{'phase':26} {'median ms':>10} {'TFLOP/s':>8} {'SM MHz':>7} {'W':>5}  reasons")
    for name, flops, t0, t1, ms in phases:
        seen = [s for s in samples if t0 <= s[0] <= t1] or samples[:1]
        mhz = statistics.mean(s[1] for s in seen)
        watts = statistics.mean(s[2] for s in seen)
        reasons = " ".join(sorted({s[3] for s in seen}))
        print(f"{name:26} {ms:10.3f} {flops / ms / 1e9:8.1f} {mhz:7.0f} {watts:5.0f}  {reasons}")


if __name__ == "__main__":
    main()
