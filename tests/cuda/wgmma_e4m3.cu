// Compile-only kernels for tests/test_compile.py, never launched. No module runs the e4m3 wgmma
// yet (issue 16 plan, S2), so these instantiate sm90/wgmma.cuh's wgmma_m64nNk32<N, E4m3>: every
// test run then checks that each width assembles to QGMMA without spills.
//
// wgmma_e4m3_nN: one warpgroup multiplies one 128-deep K block, A [64 x 128] by B [N x 128]^T,
// e4m3 tiles copied K-major into shared memory with the 128-byte swizzle, as Operand<E4m3>'s
// MMA_STEPS k32 MMAs on descriptors advanced 32 bytes a step, and writes its f32 accumulators.
#include "common/async.cuh"
#include "sm90/wgmma.cuh"

using Op = Operand<E4m3>;
static_assert(Op::BYTES == 1 && Op::BK == 128 && Op::MMA_K == 32 && Op::MMA_STEPS == 4,
              "an e4m3 K block is one 128-byte swizzled row of 4 k32 steps");

constexpr int THREADS = 128;  // one warpgroup
constexpr int ROW_BYTES = Op::BK * Op::BYTES;

// tiles: A's 64 rows, then B's N rows, of ROW_BYTES each; out: N / 2 floats per thread.
template <int N>
DEV void one_k_block(const u8* __restrict__ tiles, float* __restrict__ out) {
  __shared__ __align__(1024) u8 smem[(64 + N) * ROW_BYTES];
  // 16-byte chunk j of row r lands at chunk j ^ (r % 8): the 128-byte swizzle.
  for (int c = threadIdx.x; c < (64 + N) * 8; c += THREADS) {
    const int row = c / 8, chunk = c % 8;
    *reinterpret_cast<Vec16*>(smem + row * ROW_BYTES + ((chunk ^ (row % 8)) * 16)) =
        reinterpret_cast<const Vec16*>(tiles)[c];
  }
  fence_proxy_async_smem();  // written by the generic proxy, read by wgmma
  __syncthreads();
  const u64 a_desc = smem_desc_sw128(smem), b_desc = smem_desc_sw128(smem + 64 * ROW_BYTES);
  float acc[N / 2];
#pragma unroll
  for (int i = 0; i < N / 2; ++i) acc[i] = 0.0f;
  wgmma_fence();
#pragma unroll
  for (int step = 0; step < Op::MMA_STEPS; ++step)
    wgmma_m64nNk32<N>(acc, smem_desc_advance_kstep(a_desc, step),
                      smem_desc_advance_kstep(b_desc, step), step > 0, (E4m3*)nullptr);
  wgmma_commit();
  wgmma_wait<0>();
#pragma unroll
  for (int i = 0; i < N / 2; ++i) out[i * THREADS + threadIdx.x] = acc[i];
}

#define WGMMA_E4M3_KERNEL(N, G, TYPE, TAG)                                     \
  extern "C" __global__ void __launch_bounds__(THREADS, 1)                     \
      wgmma_e4m3_n##N(const u8* __restrict__ tiles, float* __restrict__ out) { \
    one_k_block<N>(tiles, out);                                                \
  }
WGMMA_FOR_EACH_N(WGMMA_E4M3_KERNEL, , )
