// What TMA multicast across a 2-CTA cluster rests on (docs/DESIGN.md D30's next step), checked
// and timed by probes/cluster_probe.py. Both CTAs of a cluster stream the same sequence of 16 KiB
// tiles (128 rows x 128 bytes: an fp8 GEMM's shared B) through a STAGES-deep ring:
//   MULTICAST 0  each CTA loads whole tiles itself (twice the L2 reads);
//   MULTICAST 1  CTA rank r loads rows [64 r, 64 r + 64) into both CTAs (mask 0b11); each CTA's
//                full barrier expects the whole tile; a slot is refilled only once both CTAs'
//                consumers freed it (each arrives on its own empty barrier and its partner's).
// Lane 0 of warp 0 produces; warp 1 consumes: with CHECK it sums the tile's 32-bit words (mod 2^32)
// into sums[CTA], else it only frees the slot (the timed form).
#include "common/async.cuh"
#include "common/cluster.cuh"

constexpr int ROWS = 128, ROW_BYTES = 128, TILE_BYTES = ROWS * ROW_BYTES;
constexpr int STAGES = 4;
constexpr int HALF_ROWS = ROWS / 2;
constexpr int THREADS = 128;
constexpr int SMEM_BYTES = STAGES * TILE_BYTES + 2 * STAGES * (int)sizeof(u64);

DEV u32 warp_sum(u32 v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Tile (cluster + it) % tiles of `desc`'s rows in iteration `it`.
template <bool MULTICAST, bool CHECK>
DEV void stream_tiles(const TmaDesc* desc, int tiles, int iters, u32* sums) {
  extern __shared__ __align__(1024) unsigned char smem[];
  u64* full = reinterpret_cast<u64*>(smem + STAGES * TILE_BYTES);
  u64* empty = full + STAGES;
  const u32 rank = cluster_ctarank();
  const int cluster = blockIdx.x / 2, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(&full[s], 1);
      mbar_init(&empty[s], MULTICAST ? 2 : 1);
    }
    mbar_init_fence();
  }
  cluster_sync();  // both CTAs' barriers exist before a remote arrival or a multicast reaches them
  RingState<STAGES> at;
  if (warp == 0 && lane == 0) {
    tma_prefetch_desc(desc);
    for (int it = 0; it < iters; ++it, at.advance()) {
      mbar_wait(&empty[at.stage], at.phase ^ 1);
      unsigned char* slot = smem + at.stage * TILE_BYTES;
      const int row = (cluster + it) % tiles * ROWS;
      mbar_arrive_expect_tx(&full[at.stage], TILE_BYTES);
      if (MULTICAST) {
        tma_load_2d_multicast(slot + rank * HALF_ROWS * ROW_BYTES, desc, &full[at.stage], 0,
                              row + rank * HALF_ROWS, 0b11);
      } else {
        tma_load_2d(slot, desc, &full[at.stage], 0, row);
      }
    }
  } else if (warp == 1) {
    u32 sum = 0;
    for (int it = 0; it < iters; ++it, at.advance()) {
      mbar_wait(&full[at.stage], at.phase);
      if (CHECK) {
        const u32* words = reinterpret_cast<const u32*>(smem + at.stage * TILE_BYTES);
        for (int i = lane; i < TILE_BYTES / 4; i += 32) sum += words[i];
      }
      __syncwarp();
      if (lane == 0) {
        mbar_arrive(&empty[at.stage]);
        if (MULTICAST) mbar_arrive_cluster(&empty[at.stage], rank ^ 1);
      }
    }
    sum = warp_sum(sum);
    if (CHECK && lane == 0) sums[blockIdx.x] = sum;
  }
  __syncwarp();
  cluster_sync();  // no CTA leaves while its partner may still write its smem or arrive on it
}

#define CLUSTER_PROBE_ENTRY(NAME, MULTICAST, CHECK)                                 \
  extern "C" __global__ void __cluster_dims__(2, 1, 1) __launch_bounds__(THREADS)   \
      NAME(const __grid_constant__ TmaDesc desc, int tiles, int iters, u32* sums) { \
    stream_tiles<MULTICAST, CHECK>(&desc, tiles, iters, sums);                      \
  }
CLUSTER_PROBE_ENTRY(stream_single_check, false, true)
CLUSTER_PROBE_ENTRY(stream_multicast_check, true, true)
CLUSTER_PROBE_ENTRY(stream_single, false, false)
CLUSTER_PROBE_ENTRY(stream_multicast, true, false)

extern "C" __global__ void smem_bytes(int* out) { *out = SMEM_BYTES; }
