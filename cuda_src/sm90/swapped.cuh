// Hopper (sm_90a) grouped GEMM with swapped operands: the weights are the MMA's M side (BW rows
// per tile, BW / 2 per consumer warpgroup in m64 subtiles) and an expert's tokens its N side, sized
// per tile to the rows there are (a multiple of 16 up to MAX_ROWS). The padding rows of the plan
// are never loaded or multiplied: an expert of r rows costs ceil(r / 16) * 16 columns of MMA, where
// the row-major kernels (grouped_gemm.cuh) pay whole 64- or 128-row tiles. Each expert's rows split
// into ceil(r / MAX_ROWS) chunks of equal size, so an expert of up to MAX_ROWS rows reads each
// weight tile once. Two geometries (Tiles below): 128 x 256 and 256 x 192.
//
// A unit is (chunk, weight block). Every CTA copies the plan's expert_counts and expert_offsets
// into shared memory and numbers the chunks (a scan of ceil(count / MAX_ROWS) over the experts).
// Units are walked expert by expert; inside an expert, GROUP_N weight blocks at a time, chunk, then
// block: the CTAs on one expert share its token rows through L2, and its chunks share each
// weight tile. An expert of two chunks walks block, then chunk: its two units of a weight block
// start side by side, so the tile comes from DRAM once.
//
// GEMM1: A is w1 seen through a 5-D TMA map, so that each 16-row group of a subtile's 64 rows
// holds 8 gate rows, then the 8 matching up rows. Thread (warp w, lane l) then holds the gate and
// the up value of feature 8w + l/4 for the same tokens (SwiGLU needs no exchange). B is the
// chunk's rows of x_perm (x in permuted order, written by permute.cu's gather_rows: gathering
// 256 rows per stage with cp.async starved the MMAs, docs/PERF.md).
// GEMM2: A is BW rows of w2 (output features), B the chunk's rows of h.
// B arrives by TMA in 32-row boxes, only as many as the chunk's rows need.
// Epilogues as in grouped_gemm.cuh, finished in registers (bias, SwiGLU, router weight) and
// transposed on the way: the (feature, token) fragments are staged as OutT [token][feature] in
// shared memory (16-bit outputs by stmatrix.trans), then each thread moves 16-byte vectors of one
// token's features to global memory.
#pragma once
#include "grouped_gemm.cuh"

namespace sm90 {
namespace swapped {

// The two tile geometries (moefuse/heuristics.py, choose_sm90_swapped_tiles): 128 weight rows
// (one m64 subtile per consumer warpgroup) against up to 256 token rows, 4 stages; or 256 (two
// subtiles each) against up to 192, 3 stages. The wide one asks the L2 for ~22% fewer bytes per
// FLOP; its chunks are narrower.
constexpr int NARROW_BW = 128;
constexpr int NARROW_MAX_ROWS = 256;
constexpr int NARROW_STAGES = 4;
constexpr int WIDE_BW = 256;
constexpr int WIDE_MAX_ROWS = 192;
constexpr int WIDE_STAGES = 3;
template <int BW_, int MAX_ROWS_, int STAGES_>
struct Tiles {
  static constexpr int BW = BW_;              // weight rows per tile
  static constexpr int MAX_ROWS = MAX_ROWS_;  // token rows per chunk: the MMAs' N
  static constexpr int STAGES = STAGES_;
  static constexpr int SUBTILES = BW / 128;  // m64 weight blocks per consumer warpgroup
  // The wide consumers hold 2 x 96 accumulators; its producer only issues TMA.
  static constexpr int PRODUCER_REGS = SUBTILES == 1 ? sm90::PRODUCER_REGS : 24;
  static constexpr int CONSUMER_REGS = SUBTILES == 1 ? sm90::CONSUMER_REGS : 240;
  static_assert(128 * (PRODUCER_REGS + 2 * CONSUMER_REGS) <= 65536 / THREADS / 8 * 8 * THREADS,
                "setmaxnreg within the launch's registers");
  static_assert(MAX_ROWS % 32 == 0 && MAX_ROWS <= 256, "whole stmatrix groups, one MMA's N");
};
using Narrow = Tiles<NARROW_BW, NARROW_MAX_ROWS, NARROW_STAGES>;
using Wide = Tiles<WIDE_BW, WIDE_MAX_ROWS, WIDE_STAGES>;

constexpr int MAX_EXPERTS = 512;  // local experts whose tables fit in shared memory
constexpr int TOKEN_BOX = 32;     // token rows (of x_perm or h) per TMA box
constexpr int STAGING_BYTES = 128 * (32 * 2 + 16);  // per warpgroup: 128 tokens x 32 bf16, padded

template <typename T>
struct Layout {
  static constexpr int STAGES = T::STAGES, MAX_ROWS = T::MAX_ROWS;
  static constexpr int A_STAGE_BYTES = T::BW * BK * ELEM_BYTES;
  static constexpr int B_STAGE_BYTES = MAX_ROWS * BK * ELEM_BYTES;
  static constexpr int A_OFFSET = 0;
  static constexpr int B_OFFSET = STAGES * A_STAGE_BYTES;
  static constexpr int STAGING_OFFSET = B_OFFSET + STAGES * B_STAGE_BYTES;
  static constexpr int ROWS_OFFSET = STAGING_OFFSET + 2 * STAGING_BYTES;  // per warpgroup:
  static constexpr int ROWS_BYTES = MAX_ROWS * 8;  // a chunk's output rows and router weights
  static constexpr int EXPERTS_OFFSET = ROWS_OFFSET + 2 * ROWS_BYTES;
  // Experts: chunk_first [E + 1], rows [E], first_row [E], busiest [1]
  static constexpr int EXPERTS_BYTES = (3 * (MAX_EXPERTS + 1) * 4 + 7) / 8 * 8;
  static constexpr int BARRIER_OFFSET = EXPERTS_OFFSET + EXPERTS_BYTES;
  static constexpr int BYTES = BARRIER_OFFSET + 2 * STAGES * 8;
  static_assert(A_STAGE_BYTES % 1024 == 0 && B_STAGE_BYTES % 1024 == 0, "swizzle atoms");
  static_assert(BYTES <= 232448, "exceeds the 227 KiB of shared memory per block");
};

// A unit of work: rows [first_row, first_row + rows) of expert `expert`'s segment against weight
// block `block` (BW weight rows: BW / 2 SwiGLU outputs in GEMM1, BW outputs in GEMM2).
struct Chunk {
  int expert, first_row, rows, block;
};

// The shared-memory expert tables and the unit order over them.
struct Experts {
  int* chunk_first;  // [count + 1]: the index of each expert's first chunk, then the total
  int* rows;         // [count]: expert_counts
  int* first_row;    // [count]: expert_offsets
  int* busiest;      // [1]: the most rows of any expert
  int count, num_blocks;

  DEV int units() const { return chunk_first[count] * num_blocks; }

  // Warp 0 fills the tables: lane l scans experts [16 l, 16 l + 16), then the warp adds the lanes'
  // totals (and finds the busiest expert).
  template <int MAX_ROWS>
  DEV void build(const int* __restrict__ expert_counts, const int* __restrict__ expert_offsets) {
    constexpr int PER_LANE = MAX_EXPERTS / 32;
    const int lane = threadIdx.x;
    int chunks[PER_LANE];
    int total = 0, most = 0;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int e = lane * PER_LANE + i;
      const int r = e < count ? expert_counts[e] : 0;
      chunks[i] = (r + MAX_ROWS - 1) / MAX_ROWS;
      total += chunks[i];
      most = max(most, r);
      if (e < count) {
        rows[e] = r;
        first_row[e] = expert_offsets[e];
      }
    }
    int inclusive = total;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int v = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += v;
    }
    int running = inclusive - total;
#pragma unroll
    for (int i = 0; i < PER_LANE; ++i) {
      const int e = lane * PER_LANE + i;
      if (e < count) chunk_first[e] = running;
      running += chunks[i];
    }
    if (lane == 31) chunk_first[count] = inclusive;
    most = __reduce_max_sync(0xffffffffu, most);
    if (lane == 0) *busiest = most;
  }

  DEV Chunk unit(int u) const {
    const int chunk = u / num_blocks;
    int lo = 0, hi = count - 1;  // the last expert whose first chunk is <= chunk
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

// An epilogue pass's staging geometry: rows of one token's WG_OUT finished outputs (OutT),
// PITCH bytes apart (16 bytes of padding: 8 consecutive rows hit distinct banks), PASS_ROWS tokens
// per pass; the write-out moves 16-byte chunks, CHUNKS_PER_ROW to a row, ROWS_PER_STEP rows at a
// time.
template <int WG_OUT, typename OutT>
struct Staging {
  static constexpr int PITCH = WG_OUT * (int)sizeof(OutT) + 16;
  static constexpr int PASS_ROWS = STAGING_BYTES / PITCH / 32 * 32;
  static constexpr int CHUNKS_PER_ROW = WG_OUT * (int)sizeof(OutT) / 16;
  static constexpr int ROWS_PER_STEP = 128 / CHUNKS_PER_ROW;
  static_assert(PASS_ROWS >= 32 && PASS_ROWS % ROWS_PER_STEP == 0, "whole write-out steps");
};

// Stages the values v[m][q] of 8x8 matrices m = 0..3 of a warp's fragment (thread l: fragment
// row l/4, columns 2(l%4) + q), transposed: fragment column c of matrix m lands in staging row
// place(m).row + c, at byte place(m).col_bytes. 16-bit outputs go as one stmatrix (lane l passes
// the address of row l%8 of matrix l/8); floats one by one.
struct Place {
  int row, col_bytes;
};
template <typename OutT, int PITCH, typename PlaceFn>
DEV void stage_matrices(unsigned char* staging, const float (&v)[4][2], PlaceFn place, int lane) {
  if constexpr (sizeof(OutT) == 2) {
    const Place mine = place(lane / 8);
    OutT* tag = nullptr;
    stmatrix_x4_trans(staging + (mine.row + lane % 8) * PITCH + mine.col_bytes,
                      pack2(tag, v[0][0], v[0][1]), pack2(tag, v[1][0], v[1][1]),
                      pack2(tag, v[2][0], v[2][1]), pack2(tag, v[3][0], v[3][1]));
  } else {
#pragma unroll
    for (int m = 0; m < 4; ++m) {
      const Place at = place(m);
#pragma unroll
      for (int q = 0; q < 2; ++q)
        *reinterpret_cast<float*>(staging + (at.row + 2 * (lane % 4) + q) * PITCH + at.col_bytes +
                                  4 * (lane / 4)) = v[m][q];
    }
  }
}

template <typename T, typename Elem, Epilogue EPI, typename OutT>
DEV void grouped_gemm(const TmaDesc* w_desc, const TmaDesc* tokens_desc,
                      const Elem* __restrict__ bias, const int* __restrict__ expert_counts,
                      const int* __restrict__ expert_offsets, int num_local_experts,
                      const int* __restrict__ permuted_to_expanded,
                      const float* __restrict__ topk_weights, OutT* __restrict__ out, int K, int N,
                      int top_k, Vec16* __restrict__ zero, i64 zero_vectors, int busiest_guard) {
  constexpr bool SWIGLU = EPI == Epilogue::SwiGLU;
  constexpr bool SCATTER = EPI == Epilogue::ScatterAdd;
  constexpr int BW = T::BW, MAX_ROWS = T::MAX_ROWS, STAGES = T::STAGES, SUBTILES = T::SUBTILES;
  constexpr int BLOCK_OUT = SWIGLU ? BW / 2 : BW;      // output features per weight block
  constexpr int SUB_OUT = BLOCK_OUT / (2 * SUBTILES);  // ... per m64 subtile: 32 or 64
  using G = Staging<SUB_OUT, OutT>;
  using L = Layout<T>;

  extern __shared__ __align__(1024) unsigned char smem[];
  u64* inputs_ready = reinterpret_cast<u64*>(smem + L::BARRIER_OFFSET);
  u64* stage_free = inputs_ready + STAGES;
  int* tables = reinterpret_cast<int*>(smem + L::EXPERTS_OFFSET);
  Experts experts;
  experts.count = num_local_experts;
  experts.num_blocks = (N + BLOCK_OUT - 1) / BLOCK_OUT;
  experts.chunk_first = tables;
  experts.rows = tables + MAX_EXPERTS + 1;
  experts.first_row = experts.rows + MAX_EXPERTS;
  experts.busiest = experts.first_row + MAX_EXPERTS;

  const int warpgroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(&inputs_ready[s], 1);
      mbar_init(&stage_free[s], CONSUMER_WARPS);
    }
    mbar_init_fence();
  }
  if (threadIdx.x < 32) experts.build<MAX_ROWS>(expert_counts, expert_offsets);
  __syncthreads();
  // The host may launch both geometries, each guarded on the busiest expert's rows; the one whose
  // guard fails leaves at once (guard g > 0: run iff busiest <= g; g < 0: iff busiest > -g).
  if (busiest_guard != 0 && (*experts.busiest <= abs(busiest_guard)) != (busiest_guard > 0)) return;
  const int k_blocks = (K + BK - 1) / BK;

  if (warpgroup == 0) {
    regs_dealloc<T::PRODUCER_REGS>();
    // ---- the producer: thread 0 waits for a free stage, then loads the weight tile and the
    // chunk's token rows by TMA.
    if (threadIdx.x == 0) {
      tma_prefetch_desc(w_desc);
      tma_prefetch_desc(tokens_desc);
      RingState<STAGES> ring;
      for (int u = blockIdx.x; u < experts.units(); u += gridDim.x) {
        const Chunk tile = experts.unit(u);
        const int boxes = (tile.rows + TOKEN_BOX - 1) / TOKEN_BOX;
        for (int kb = 0; kb < k_blocks; ++kb, ring.advance()) {
          constexpr int BOX_BYTES = TOKEN_BOX * BK * ELEM_BYTES;
          u64* bar = &inputs_ready[ring.stage];
          unsigned char* a_tile = smem + L::A_OFFSET + ring.stage * L::A_STAGE_BYTES;
          unsigned char* b_tile = smem + L::B_OFFSET + ring.stage * L::B_STAGE_BYTES;
          mbar_wait(&stage_free[ring.stage], ring.phase ^ 1);
          mbar_arrive_expect_tx(bar, L::A_STAGE_BYTES + boxes * BOX_BYTES);
          if (SWIGLU) {
            // (k, row in group, gate | up, 8-feature group, expert): 8 groups of 8 features
            tma_load_5d(a_tile, w_desc, bar, kb * BK, 0, 0, tile.block * (BW / 16), tile.expert);
          } else {
            tma_load_2d(a_tile, w_desc, bar, kb * BK, tile.expert * N + tile.block * BW);
          }
          for (int box = 0; box < boxes; ++box)
            tma_load_2d(b_tile + box * BOX_BYTES, tokens_desc, bar, kb * BK,
                        tile.first_row + box * TOKEN_BOX);
        }
      }
    }
    clear_vectors(zero, zero_vectors);  // once the loads are issued
    return;
  }

  // ---- consumers: warpgroup c multiplies weight rows [64 c, 64 c + 64) of each tile -----------
  regs_alloc<T::CONSUMER_REGS>();
  const int c = warpgroup - 1;
  const int t = threadIdx.x % 128, lane = t % 32, warp = t / 32;
  unsigned char* staging = smem + L::STAGING_OFFSET + c * STAGING_BYTES;
  int* out_row = reinterpret_cast<int*>(smem + L::ROWS_OFFSET + c * L::ROWS_BYTES);
  float* out_scale = reinterpret_cast<float*>(out_row + MAX_ROWS);
  float acc[SUBTILES][MAX_ROWS / 2];
  RingState<STAGES> ring;
  for (int u = blockIdx.x; u < experts.units(); u += gridDim.x) {
    const Chunk tile = experts.unit(u);
    // ScatterAdd: the expanded indices of this thread's two rows of the chunk (t, t + 128), whose
    // router weights load once the first MMAs are issued.
    int expanded[2] = {-1, -1};
    float scale[2] = {0.0f, 0.0f};
    if (SCATTER) {
#pragma unroll
      for (int i = 0; i < 2; ++i)
        if (t + 128 * i < tile.rows)
          expanded[i] = permuted_to_expanded[tile.first_row + t + 128 * i];
    }
    with_width<MAX_ROWS>(tile.rows, [&](auto width) {
      constexpr int WIDTH = decltype(width)::value;
      for (int kb = 0; kb < k_blocks; ++kb, ring.advance()) {
        mbar_wait(&inputs_ready[ring.stage], ring.phase);
        const unsigned char* a_tile = smem + L::A_OFFSET + ring.stage * L::A_STAGE_BYTES;
        const u64 b = smem_desc_sw128(smem + L::B_OFFSET + ring.stage * L::B_STAGE_BYTES);
        wgmma_fence();
#pragma unroll
        for (int k16 = 0; k16 < BK / 16; ++k16) {
#pragma unroll
          for (int sub = 0; sub < SUBTILES; ++sub) {
            const u64 a = smem_desc_sw128(a_tile + 64 * (SUBTILES * c + sub) * BK * ELEM_BYTES);
            wgmma_m64nNk16<WIDTH>(acc[sub], smem_desc_advance_k16(a, k16),
                                  smem_desc_advance_k16(b, k16), kb > 0 || k16 > 0, (Elem*)nullptr);
          }
        }
        wgmma_commit();
        if (SCATTER && kb == 0) {
#pragma unroll
          for (int i = 0; i < 2; ++i)
            scale[i] = expanded[i] >= 0 ? topk_weights[expanded[i]] : 0.0f;
        }
        wgmma_wait<0>();
        if (lane == 0) mbar_arrive(&stage_free[ring.stage]);
      }
    });

    // ---- epilogue: registers -> finished outputs (bias, SwiGLU or router weight, OutT) staged
    // [token][feature] -> 16-byte global vectors of one token's features --------------------------
    const int w_rows = SWIGLU ? 2 * N : N;
    const Elem* expert_bias = bias ? bias + (i64)tile.expert * w_rows : nullptr;
    if (SCATTER) {
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        if (t + 128 * i < tile.rows) {
          out_row[t + 128 * i] = expanded[i] / top_k;
          out_scale[t + 128 * i] = scale[i];
        }
      }
      named_barrier_sync(1 + c, 128);
    }
    // subtile by subtile through the warpgroup's staging
#pragma unroll
    for (int sub = 0; sub < SUBTILES; ++sub) {
      const int first_col = tile.block * BLOCK_OUT + (SUBTILES * c + sub) * SUB_OUT;
      // fragment row 16 warp + lane/4 (+8): GEMM1 gate (up) of feature 8 warp + lane/4, GEMM2
      // feature 16 warp + lane/4 (+8)
      float row_bias[2] = {0.0f, 0.0f};
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int col = first_col + (SWIGLU ? 8 * warp + lane / 4 : 16 * warp + lane / 4 + 8 * h);
        if (expert_bias && col < N) row_bias[h] = to_float(expert_bias[SWIGLU ? col + h * N : col]);
      }
      const int chunk = t % G::CHUNKS_PER_ROW;
      const int col = first_col + chunk * 16 / (int)sizeof(OutT);
      // A stmatrix covers 4 token groups of 8 (GEMM1: one 8-feature matrix each) or 2 (GEMM2: the
      // fragment's two 8-feature halves each).
      constexpr int GROUPS_PER_STORE = SWIGLU ? 4 : 2;
#pragma unroll
      for (int pass = 0; pass < (MAX_ROWS + G::PASS_ROWS - 1) / G::PASS_ROWS; ++pass) {
        if (pass * G::PASS_ROWS >= tile.rows) break;
#pragma unroll
        for (int s = 0; s < G::PASS_ROWS / (8 * GROUPS_PER_STORE); ++s) {
          const int j0 = (pass * G::PASS_ROWS) / 8 + s * GROUPS_PER_STORE;  // first token group
          if (8 * j0 >= MAX_ROWS || 8 * j0 >= tile.rows) break;
          // matrix m: token group j0 + m (GEMM1) or j0 + m / 2, feature half m % 2 (GEMM2)
          auto group = [&](int m) { return j0 + (SWIGLU ? m : m / 2); };
          auto half = [&](int m) { return SWIGLU ? 0 : m % 2; };
          auto place = [&](int m) {
            return Place{8 * group(m) - pass * G::PASS_ROWS,
                         (SWIGLU ? 8 * warp : 16 * warp + 8 * half(m)) * (int)sizeof(OutT)};
          };
          float v[4][2];
#pragma unroll
          for (int m = 0; m < 4; ++m) {
            const int j = group(m), h = half(m);
            float token_scale[2] = {1.0f, 1.0f};
            if (SCATTER) {
              const float2 w = *reinterpret_cast<const float2*>(out_scale + 8 * j + 2 * (lane % 4));
              token_scale[0] = w.x;
              token_scale[1] = w.y;
            }
#pragma unroll
            for (int q = 0; q < 2; ++q) {
              v[m][q] = SWIGLU ? silu(acc[sub][4 * j + q] + row_bias[0]) *
                                     (acc[sub][4 * j + 2 + q] + row_bias[1])
                               : token_scale[q] * (acc[sub][4 * j + 2 * h + q] + row_bias[h]);
            }
          }
          stage_matrices<OutT, G::PITCH>(staging, v, place, lane);
        }
        named_barrier_sync(1 + c, 128);
#pragma unroll
        for (int i = 0; i < G::PASS_ROWS / G::ROWS_PER_STEP; ++i) {
          const int r = t / G::CHUNKS_PER_ROW + i * G::ROWS_PER_STEP;
          const int token = pass * G::PASS_ROWS + r;
          if (token >= tile.rows || col >= N) continue;
          const Vec16 v = *reinterpret_cast<const Vec16*>(staging + r * G::PITCH + chunk * 16);
          if (SCATTER) {
            red_add_16(out + (i64)out_row[token] * N + col, v);
          } else {
            st_global_16(out + (i64)(tile.first_row + token) * N + col, v);
          }
        }
        named_barrier_sync(1 + c, 128);
      }
    }
  }
}

}  // namespace swapped
}  // namespace sm90

// Entry points, instantiated by swapped_{bf16,f16}.cu (narrow tiles) and
// swapped_wide_{bf16,f16}.cu. Launch: a persistent grid of at most one CTA per SM, THREADS threads,
// swapped::Layout::BYTES of dynamic shared memory; moefuse/backends.py mirrors the names and
// geometry. GEMM1 takes the maps of w1 (5-D) and x_perm, GEMM2 those of w2 and h.
#define MOEFUSE_SM90_SWAPPED_ENTRY(NAME, TILES, ELEM, EPI, OUT)                                   \
  extern "C" __global__ void __launch_bounds__(sm90::THREADS, 1)                                  \
      NAME(const __grid_constant__ TmaDesc w_desc, const __grid_constant__ TmaDesc tokens_desc,   \
           const ELEM* bias, const int* expert_counts, const int* expert_offsets,                 \
           int num_local_experts, const int* permuted_to_expanded, const float* topk_weights,     \
           OUT* out, int K, int N, int top_k, Vec16* zero, i64 zero_vectors, int busiest_guard) { \
    sm90::swapped::grouped_gemm<sm90::swapped::TILES, ELEM, sm90::Epilogue::EPI, OUT>(            \
        &w_desc, &tokens_desc, bias, expert_counts, expert_offsets, num_local_experts,            \
        permuted_to_expanded, topk_weights, out, K, N, top_k, zero, zero_vectors, busiest_guard); \
  }
// PREFIX: sm90_swapped (Narrow) or sm90_swapped_wide (Wide).
#define MOEFUSE_SM90_SWAPPED_ENTRIES(PREFIX, TILES, TAG, ELEM)                                  \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm1_swiglu_##TAG, TILES, ELEM, SwiGLU, ELEM)            \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm2_store_##TAG, TILES, ELEM, Store, ELEM)              \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm2_scatter_##TAG##_out_##TAG, TILES, ELEM, ScatterAdd, \
                             ELEM)                                                              \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm2_scatter_##TAG##_out_f32, TILES, ELEM, ScatterAdd, float)
