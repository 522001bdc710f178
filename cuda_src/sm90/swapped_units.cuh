// The units of the swapped-operand kernels (swapped.cuh) and their order. A unit is (chunk,
// weight block). Every CTA copies the plan's expert_counts and expert_offsets into shared memory
// and numbers the chunks (a scan of ceil(count / MAX_ROWS) over the experts). Units are walked
// expert by expert; inside an expert, GROUP_N weight blocks at a time, chunk, then block: the CTAs
// on one expert share its token rows through L2, and its chunks share each weight tile. An expert
// of two chunks walks block, then chunk: its two units of a weight block start side by side, so
// the tile comes from DRAM once.
#pragma once
#include "config.cuh"

namespace sm90 {
namespace swapped {

constexpr int MAX_EXPERTS = 512;  // local experts whose tables fit in shared memory

// A unit of work: rows [first_row, first_row + rows) of expert `expert`'s segment against weight
// block `block` (BW weight rows: BW / 2 gated outputs in GEMM1, BW outputs in GEMM2), over the K
// blocks [k_begin, k_end) (all of K).
struct Chunk {
  int expert, first_row, rows, block, k_begin, k_end;
};

// The shared-memory expert tables and the unit order over them.
struct Experts {
  // Tables: chunk_first [E + 1], rows [E], first_row [E], busiest [1]
  static constexpr int BYTES = (3 * (MAX_EXPERTS + 1) * 4 + 7) / 8 * 8;
  int* chunk_first;  // [num_experts + 1]: the index of each expert's first chunk, then the total
  int* rows;         // [num_experts]: expert_counts
  int* first_row;    // [num_experts]: expert_offsets
  int* busiest;      // [1]: the most rows of any expert
  int num_experts, num_blocks, k_blocks;

  DEV Experts(unsigned char* tables, int num_experts_, int num_blocks_, int k_blocks_)
      : chunk_first(reinterpret_cast<int*>(tables)),
        rows(chunk_first + MAX_EXPERTS + 1),
        first_row(rows + MAX_EXPERTS),
        busiest(first_row + MAX_EXPERTS),
        num_experts(num_experts_),
        num_blocks(num_blocks_),
        k_blocks(k_blocks_) {}

  DEV int count() const { return chunk_first[num_experts] * num_blocks; }

  // Warp 0 fills the tables: lane l scans experts [16 l, 16 l + 16), then the warp adds the lanes'
  // totals (and finds the busiest expert).
  template <int MAX_ROWS>
  DEV void build(const int* __restrict__ expert_counts, const int* __restrict__ expert_offsets) {
    constexpr int PER_LANE = MAX_EXPERTS / WARP_THREADS;
    const int lane = threadIdx.x;
    int chunks[PER_LANE];
    int total = 0, most = 0;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int e = lane * PER_LANE + i;
      const int r = e < num_experts ? expert_counts[e] : 0;
      chunks[i] = (r + MAX_ROWS - 1) / MAX_ROWS;
      total += chunks[i];
      most = max(most, r);
      if (e < num_experts) {
        rows[e] = r;
        first_row[e] = expert_offsets[e];
      }
    }
    int inclusive = total;
#pragma unroll
    for (int d = 1; d < WARP_THREADS; d *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += v;
    }
    int running = inclusive - total;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int e = lane * PER_LANE + i;
      if (e < num_experts) chunk_first[e] = running;
      running += chunks[i];
    }
    if (lane == WARP_THREADS - 1) chunk_first[num_experts] = inclusive;
    most = __reduce_max_sync(0xffffffffu, most);
    if (lane == 0) *busiest = most;
  }

  DEV Chunk unit(int u) const {
    const int chunk = u / num_blocks;
    int lo = 0, hi = num_experts - 1;  // the last expert whose first chunk is <= chunk
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (chunk_first[mid] <= chunk) {
        lo = mid;
      } else {
        hi = mid - 1;
      }
    }
    const int chunks = chunk_first[lo + 1] - chunk_first[lo];
    const int r = u - chunk_first[lo] * num_blocks;
    const int group = r / (chunks * GROUP_N), in_group = r - group * chunks * GROUP_N;
    const int width = min(GROUP_N, num_blocks - group * GROUP_N);
    const bool chunk_inner = chunks <= 2;
    const int c = chunk_inner ? in_group % chunks : in_group / width;
    const int size = (rows[lo] + chunks - 1) / chunks;
    Chunk t;
    t.expert = lo;
    t.block = group * GROUP_N + (chunk_inner ? in_group / chunks : in_group % width);
    t.first_row = first_row[lo] + c * size;
    t.rows = min(size, rows[lo] - c * size);
    t.k_begin = 0;
    t.k_end = k_blocks;
    return t;
  }
};

// Calls f(Width<N>{}) with the narrowest MMA width N (a multiple of 16) that covers `rows`.
template <int N>
struct Width {
  static constexpr int value = N;
};
template <int MAX_ROWS, int N = 16, typename F>
DEV void with_width(int rows, F&& f) {
  if constexpr (N == MAX_ROWS) {
    f(Width<N>{});
  } else {
    if (rows <= N) {
      f(Width<N>{});
    } else {
      with_width<MAX_ROWS, N + 16>(rows, f);
    }
  }
}

}  // namespace swapped
}  // namespace sm90
