// Device call A of the issue 16 plan (section 6): e4m3 wgmma (QGMMA) throughput with and
// without promotion into fp32 registers, on shared-memory-resident operands (no global loads in
// the loop), and QGMMA on NaN operands. Built by probes/fp8_probe.py with -I cuda_src.
//
// A CTA of 384 threads: warpgroup 0 only loads the tiles and leaves; warpgroups 1 and 2 each own
// 64 rows of a 128 x 128 x 128 e4m3 stage (A 128 x 128, B 128 x 128, both K-major, 128-byte
// swizzle) and run it `iters` times, 4 k32 MMAs per stage (sm90/wgmma.cuh's wgmma_m64nNk32):
//   MODE 0  no promotion: every MMA accumulates into one set of accumulators
//   MODE 1  promotion per 128: a fresh accumulator per stage, then final += s * acc (wait<0>)
//   MODE 2  promotion per 64: the same per 2 k32 MMAs, twice a stage
//   MODE 3  per 64 with two accumulator sets: both halves issued, the first promoted (wait<1>)
//           while the second's MMAs run, then the second (wait<0>)
//   MODE 4  as 3, pipelined across stages (the next stage's first half issued before the second
//           half's promotion): ptxas serialises it (C7514, logged), measured to see the cost
// s is one of 16 scales (by stage and by the thread's row half), read from shared memory, so
// final = sum over stages of s * (A . B); MODE 0 writes acc = iters * (A . B).
#include "common/async.cuh"
#include "sm90/wgmma.cuh"

constexpr int THREADS = 384;
constexpr int TILE_ROWS = 128;               // A rows, B rows (N), K bytes per row
constexpr int TILE_BYTES = TILE_ROWS * 128;  // 16 KiB of e4m3
constexpr int ACC = 64;                      // m64n128 f32 accumulators per thread
constexpr int SCALES = 16;                   // 8 stages x 2 row halves

// k32 steps [first, first + count) of the stage into `d` (the first one overwrites when `fresh`).
template <int FIRST, int COUNT, bool FRESH>
DEV void mma_steps(float (&d)[ACC], u64 a_desc, u64 b_desc) {
  wgmma_fence();
#pragma unroll
  for (int k = FIRST; k < FIRST + COUNT; ++k)
    wgmma_m64nNk32<128>(d, smem_desc_advance_kstep(a_desc, k), smem_desc_advance_kstep(b_desc, k),
                        !(FRESH && k == FIRST), (E4m3*)nullptr);
  wgmma_commit();
}

// final += s * acc, s by the register's row half (rows l/4 and l/4 + 8 of the warp's 16).
DEV void promote(float (&final)[ACC], const float (&acc)[ACC], const float* scales, int stage) {
  const float s0 = scales[(stage % 8) * 2], s1 = scales[(stage % 8) * 2 + 1];
#pragma unroll
  for (int i = 0; i < ACC; ++i) final[i] = fmaf((i & 2) ? s1 : s0, acc[i], final[i]);
}

// tiles: A (128 rows) then B (128 rows), 128 bytes each, into shared memory with the 128-byte
// swizzle (16-byte chunk j of row r at chunk j ^ (r % 8)).
DEV void load_tiles(u8* smem, const u8* tiles) {
  for (int c = threadIdx.x; c < 2 * TILE_ROWS * 8; c += THREADS) {
    const int row = c / 8, chunk = c % 8;
    const Vec16 v = reinterpret_cast<const Vec16*>(tiles)[c];
    *reinterpret_cast<Vec16*>(smem + row * 128 + ((chunk ^ (row % 8)) * 16)) = v;
  }
  fence_proxy_async_smem();
}

template <int MODE>
DEV void qgmma_loop(const u8* tiles, const float* scales_in, float* out, int iters) {
  __shared__ __align__(1024) u8 smem[2 * TILE_BYTES];
  __shared__ float scales[SCALES];
  load_tiles(smem, tiles);
  if (threadIdx.x < SCALES) scales[threadIdx.x] = scales_in[threadIdx.x];
  __syncthreads();
  const int wg = threadIdx.x / 128;
  if (wg == 0) {
    regs_dealloc<40>();
    return;
  }
  regs_alloc<232>();
  const u64 a_desc = smem_desc_sw128(smem + (wg - 1) * 64 * 128);
  const u64 b_desc = smem_desc_sw128(smem + TILE_BYTES);
  float acc[ACC], final[ACC];
#pragma unroll
  for (int i = 0; i < ACC; ++i) acc[i] = final[i] = 0.0f;
  if constexpr (MODE == 0) {
    for (int it = 0; it < iters; ++it) mma_steps<0, 4, false>(acc, a_desc, b_desc);
    wgmma_wait<0>();
#pragma unroll
    for (int i = 0; i < ACC; ++i) final[i] = acc[i];
  } else if constexpr (MODE == 1) {
    for (int it = 0; it < iters; ++it) {
      mma_steps<0, 4, true>(acc, a_desc, b_desc);
      wgmma_wait<0>();
      promote(final, acc, scales, it);
    }
  } else if constexpr (MODE == 2) {
    for (int it = 0; it < iters; ++it) {
      mma_steps<0, 2, true>(acc, a_desc, b_desc);
      wgmma_wait<0>();
      promote(final, acc, scales, it);
      mma_steps<2, 2, true>(acc, a_desc, b_desc);
      wgmma_wait<0>();
      promote(final, acc, scales, it);
    }
  } else if constexpr (MODE == 3) {
    float other[ACC];
    for (int it = 0; it < iters; ++it) {
      mma_steps<0, 2, true>(acc, a_desc, b_desc);
      mma_steps<2, 2, true>(other, a_desc, b_desc);
      wgmma_wait<1>();
      promote(final, acc, scales, it);
      wgmma_wait<0>();
      promote(final, other, scales, it);
    }
  } else {
    float other[ACC];
    mma_steps<0, 2, true>(acc, a_desc, b_desc);
    for (int it = 0; it < iters - 1; ++it) {
      mma_steps<2, 2, true>(other, a_desc, b_desc);
      wgmma_wait<1>();
      promote(final, acc, scales, it);
      mma_steps<0, 2, true>(acc, a_desc, b_desc);
      wgmma_wait<1>();
      promote(final, other, scales, it);
    }
    mma_steps<2, 2, true>(other, a_desc, b_desc);
    wgmma_wait<1>();
    promote(final, acc, scales, iters - 1);
    wgmma_wait<0>();
    promote(final, other, scales, iters - 1);
  }
  // Every CTA writes its 128 x 128 result (row-major) at out + blockIdx.x * 128 * 128.
  const int t = threadIdx.x - 128, warp = t / 32, lane = t % 32;
  float* tile = out + (i64)blockIdx.x * TILE_ROWS * TILE_ROWS;
#pragma unroll
  for (int i = 0; i < ACC; ++i) {
    const int row = warp * 16 + lane / 4 + 8 * ((i >> 1) & 1);
    const int col = 8 * (i >> 2) + 2 * (lane % 4) + (i & 1);
    tile[row * TILE_ROWS + col] = final[i];
  }
}

#define QGMMA_ENTRY(MODE)                                                             \
  extern "C" __global__ void __launch_bounds__(THREADS, 1)                            \
      qgmma_mode##MODE(const u8* tiles, const float* scales, float* out, int iters) { \
    qgmma_loop<MODE>(tiles, scales, out, iters);                                      \
  }
QGMMA_ENTRY(0)
QGMMA_ENTRY(1)
QGMMA_ENTRY(2)
QGMMA_ENTRY(3)
QGMMA_ENTRY(4)
