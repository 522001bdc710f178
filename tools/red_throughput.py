"""How fast the GPU takes 16-byte stores and reductions into global memory, by operation and by
how much memory they cover (docs/DESIGN.md D1; docs/EXPERIMENTS.md, change 54).

    python tools/red_throughput.py [--footprints 8,32,256] [--reps 7]

Every thread of a full grid issues 16-byte operations: `st.global.v4.b32`, or `red.global.add` as
4 x bf16x2, 4 x f16x2 or 4 x f32. Two address patterns: `stream` (consecutive threads, consecutive
vectors, sweeping the footprint) and `rows` (128-byte segments of pseudo-random 4 KB rows, the
pattern of the fused finalize's write-out). Prints GB/s of payload, median of the reps.
"""

from __future__ import annotations

import argparse

import cupy as cp

from moefuse_bench.timing import Timing, median_ms

SOURCE = r"""
#define OP_KERNEL(NAME, ASM)                                                                 \
  extern "C" __global__ void NAME(unsigned char* base, long long vectors, int iters, int rows_mode) { \
    const long long threads = (long long)gridDim.x * blockDim.x;                             \
    const long long g = (long long)blockIdx.x * blockDim.x + threadIdx.x;                    \
    const unsigned v0 = 0x3f803f80u;                                                         \
    for (int i = 0; i < iters; ++i) {                                                        \
      long long vec = g + i * threads;                                                       \
      if (rows_mode) {                                                                       \
        const long long segment = vec / 8, rows = vectors / 256;                             \
        const long long row = (segment * 2654435761ll) % rows;                               \
        vec = row * 256 + (segment / rows % 32) * 8 + vec % 8;                               \
      } else {                                                                               \
        vec %= vectors;                                                                      \
      }                                                                                      \
      unsigned char* p = base + vec * 16;                                                    \
      asm volatile(ASM ::"l"(p), "r"(v0), "r"(v0), "r"(v0), "r"(v0) : "memory");             \
    }                                                                                        \
  }
OP_KERNEL(op_store, "st.global.v4.b32 [%0], {%1, %2, %3, %4};")
OP_KERNEL(op_red_bf16x2, "red.global.add.noftz.v4.bf16x2 [%0], {%1, %2, %3, %4};")
OP_KERNEL(op_red_f16x2, "red.global.add.noftz.v4.f16x2 [%0], {%1, %2, %3, %4};")
OP_KERNEL(op_red_f32, "red.global.add.v4.f32 [%0], {%1, %2, %3, %4};")
"""
# bf16x2: 1.0 in each half (f16x2: ~1.9; f32: ~1.0). The values do not matter.
OPS = ("op_store", "op_red_bf16x2", "op_red_f16x2", "op_red_f32")


def gbps(kernel, grid: tuple[int, int], target, iters: int, rows: bool, reps: int, stream) -> float:
    """Payload GB/s of one operation kernel, median of `reps` timed launches after a warm-up."""
    blocks, threads = grid
    args = (target, cp.int64(target.size // 16), cp.int32(iters), cp.int32(rows))
    ms = median_ms(lambda _: kernel((blocks,), (threads,), args), stream, Timing(reps=reps, warmup=1))
    return 16 * blocks * threads * iters / ms / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--footprints", default="8,32,256", help="MB covered, comma-separated")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--bytes", type=int, default=1024, help="MB of payload per launch")
    args = parser.parse_args()
    module = cp.RawModule(code=SOURCE, options=("--std=c++17",))
    device, stream = cp.cuda.Device(), cp.cuda.get_current_stream()
    grid = (4 * device.attributes["MultiProcessorCount"], 256)
    iters = (args.bytes << 20) // (16 * grid[0] * grid[1])
    print(f"{cp.cuda.runtime.getDeviceProperties(device.id)['name'].decode()}: {grid[0]} x {grid[1]} threads")
    print(f"{'op':16} {'pattern':8} {'footprint MB':>12} {'GB/s':>8}")
    for footprint in (int(f) for f in args.footprints.split(",")):
        target = cp.zeros(footprint << 20, dtype=cp.uint8)
        for pattern in ("stream", "rows"):
            for op in OPS:
                kernel = module.get_function(op)
                rate = gbps(kernel, grid, target, iters, pattern == "rows", args.reps, stream)
                print(f"{op:16} {pattern:8} {footprint:12d} {rate:8.0f}")


if __name__ == "__main__":
    main()
