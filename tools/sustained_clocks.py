"""SM clock, power and throughput of a short burst vs sustained load, for cuBLAS and a moefuse forward.

    python tools/sustained_clocks.py [--shape mixtral|H,I,E,k|HxIxExk] [--tokens T]

bench.py's matmul ceiling is a burst of 20 cuBLAS 8192^3 products from an idle GPU; a large MoE
forward runs long enough for the power cap to lower the clock. This times both ways, with the
benchmark's timing core, sampling `nvidia-smi` every 20 ms, and prints each phase's median time,
TFLOP/s, mean SM clock, mean power and the clock-event reasons seen (0x4: software power cap).
"""

from __future__ import annotations

import statistics
import subprocess
import time
from collections.abc import Callable
from datetime import datetime

import cupy as cp

from moefuse_bench.ceilings import CEILING_TIMING, MATMUL_N
from moefuse_bench.dtypes import BF16
from moefuse_bench.problems import randn, random_problem
from moefuse_bench.shapes import tool_parser
from moefuse_bench.timing import Timing, idle, median_ms

QUERY = "timestamp,clocks.sm,power.draw,clocks_event_reasons.active"


def timed(fn: Callable[[], object], reps: int, stream: cp.cuda.Stream) -> tuple[float, float, float]:
    """(t0, t1, median ms) of `reps` calls of fn after 3 warm-ups, from an idle GPU; t0 and t1
    bound the calls, not the idle time before them."""
    idle(stream, 1.5)
    t0 = time.time()
    ms = median_ms(lambda _: fn(), stream, Timing(reps=reps, warmup=CEILING_TIMING.warmup))
    return t0, time.time(), ms


def main() -> None:
    parser = tool_parser(__doc__, "mixtral", 16384)
    args = parser.parse_args()
    layer, case = random_problem(args.shape, args.tokens)
    x, weights, ids = case.sets[0]
    sampler = subprocess.Popen(
        ["nvidia-smi", f"--query-gpu={QUERY}", "--format=csv,noheader,nounits", "-lms", "20"],
        stdout=subprocess.PIPE,
        text=True,
    )
    stream = cp.cuda.Stream(non_blocking=True)
    phases = []
    with stream:
        n = MATMUL_N
        a, b = randn((n, n), 1.0, BF16), randn((n, n), 1.0, BF16)
        out = cp.empty((args.tokens, args.shape.H), dtype=x.dtype)
        burst, forward_flops = CEILING_TIMING.reps, args.shape.flops(args.tokens)

        def matmul() -> None:
            cp.matmul(a, b)

        def forward() -> None:
            layer(x, weights, ids, out=out)

        for name, fn, flops, reps in (
            (f"cuBLAS {n}^3, {burst} reps", matmul, 2 * n**3, burst),
            (f"cuBLAS {n}^3, 300 reps", matmul, 2 * n**3, 300),
            ("moefuse forward, 10 reps", forward, forward_flops, 10),
            ("moefuse forward, 60 reps", forward, forward_flops, 60),
        ):
            phases.append((name, flops, *timed(fn, reps, stream)))
    sampler.terminate()
    samples = []
    for line in sampler.communicate()[0].splitlines():
        stamp, mhz, watts, reasons = (f.strip() for f in line.split(","))
        when = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
        samples.append((when, float(mhz), float(watts), reasons))
    print(f"shape {args.shape.name} T={args.tokens}")
    print(f"{'phase':26} {'median ms':>10} {'TFLOP/s':>8} {'SM MHz':>7} {'W':>5}  reasons")
    for name, flops, t0, t1, ms in phases:
        seen = [s for s in samples if t0 <= s[0] <= t1] or samples[:1]
        mhz = statistics.mean(s[1] for s in seen)
        watts = statistics.mean(s[2] for s in seen)
        reasons = " ".join(sorted({s[3] for s in seen}))
        print(f"{name:26} {ms:10.3f} {flops / ms / 1e9:8.1f} {mhz:7.0f} {watts:5.0f}  {reasons}")


if __name__ == "__main__":
    main()
