// Hopper (sm_90a) grouped GEMM for the MoE expert layers: TMA loads into a STAGES-deep shared
// memory ring guarded by mbarriers, wgmma on two consumer warpgroups, one producer warpgroup,
// a persistent grid walking a static tile schedule over the device-side routing plan.
// grouped_gemm_m128.cu and grouped_gemm_m64.cu instantiate the entry points (one module each).
//
// M tile i covers permuted rows [i*BM, (i+1)*BM) of expert tile_expert[i], whose segment is padded
// to BM rows. BM = 128: the consumer warpgroups split the tile's rows (64 each, the whole BN
// columns); BM = 64 (decode and small batches: half the padding rows multiplied): they split its
// columns (BN/2 each, all 64 rows). GEMM1's A is x [T, K] itself: the producer warpgroup gathers
// each tile's rows (row permuted_to_expanded[p] / top_k; padding rows skipped) with 16-byte
// cp.async into the swizzled stage. GEMM2's A is h [rows, K], already in permuted order, loaded by
// TMA as BM-row boxes. B is w viewed as [E * w_rows, K], loaded by TMA. Epilogues (rows whose
// permuted_to_expanded is -1 are padding and never written):
//   SwiGLU:     h[p, j]      = silu(acc_gate + b1[e, j]) * (acc_up + b1[e, I + j])
//               (a tile's B holds BN/2 gate rows, then the BN/2 matching up rows)
//   Store:      y[p, n]      = acc + b2[e, n]
//   ScatterAdd: out[tok, n] += w(p) * (acc + b2[e, n]), tok = permuted_to_expanded[p] / top_k;
//               K may be split across units (the atomics sum the partials; split 0 adds the bias).
// Each warpgroup's epilogue stages its 64-row slab through shared memory so that every global store
// or reduction is a coalesced 16-byte vector.
#pragma once
#include "../common/async.cuh"
#include "wgmma.cuh"

namespace sm90 {

constexpr int BK = 64;  // one 128-byte swizzled row of 16-bit elements
constexpr int THREADS = 384;
constexpr int PRODUCER_REGS = 40;
constexpr int CONSUMER_REGS = 232;
constexpr int CONSUMER_WARPS = 8;
constexpr int GROUP_N = 8;                // n tiles walked together (L2 reuse of A and B)
constexpr int GATHER_ROWS_PER_PASS = 32;  // of a stage, by the 128 producer threads (4 per row)
constexpr int STAGING_ROW_BYTES = 128;    // epilogue pass: 128 bytes of each of 64 rows
constexpr int STAGING_PITCH = 128 + 16;   // padded: fragment writes hit distinct banks
constexpr int ELEM_BYTES = 2;

enum class Epilogue { SwiGLU, Store, ScatterAdd };

// How a BM x BN tile is shared by the two consumer warpgroups: each issues m64 x WG_N MMAs on
// its rows (A) and columns (B) of the stage.
template <int BM, int BN>
struct Split {
  static_assert(BM == 64 || BM == 128, "64- or 128-row tiles");
  static constexpr int WG_N = BM == 128 ? BN : BN / 2;
  static constexpr int SLICES = BN / WG_N;  // of B's rows (the tile's columns)
  DEV static int a_row(int c) { return BM == 128 ? 64 * c : 0; }
  DEV static int slice(int c) { return BM == 128 ? 0 : c; }
  DEV static int b_row(int c) { return slice(c) * WG_N; }
};

template <int BM, int BN, int STAGES>
struct Layout {
  static constexpr int A_STAGE_BYTES = BM * BK * ELEM_BYTES;
  static constexpr int B_STAGE_BYTES = BN * BK * ELEM_BYTES;
  static constexpr int A_OFFSET = 0;
  static constexpr int B_OFFSET = STAGES * A_STAGE_BYTES;
  static constexpr int STAGING_OFFSET = B_OFFSET + STAGES * B_STAGE_BYTES;
  static constexpr int BARRIER_OFFSET = STAGING_OFFSET + 2 * 64 * STAGING_PITCH;
  static constexpr int BYTES = BARRIER_OFFSET + 2 * STAGES * 8;
  static_assert(A_STAGE_BYTES % 1024 == 0 && B_STAGE_BYTES % 2048 == 0, "swizzle atoms");
  static_assert(Split<BM, BN>::WG_N >= 64, "wgmma.cuh has N = 64, 128, 256");
  static_assert(BYTES <= 232448, "exceeds the 227 KiB of shared memory per block");
};

// One unit of work: an output tile (m, n) and a slice of the K blocks.
struct Unit {
  int m, n, k_begin, k_end;
};

struct Schedule {
  int num_m, num_n, k_splits, k_blocks, k_per_split;
  DEV int count() const { return num_m * num_n * k_splits; }
  // Units sharing a K slice are walked GROUP_N n tiles at a time, n fastest inside a group, then
  // m: neighbouring CTAs share A tiles and B tiles while both are still in L2. (An expert-major
  // order measured slower on most shapes: docs/PERF.md, change 17.)
  DEV Unit unit(int u) const {
    const int split = u % k_splits;
    const int t = u / k_splits;
    const int per_group = num_m * GROUP_N;
    const int group = t / per_group, r = t % per_group;
    const int n_first = group * GROUP_N;
    const int width = min(GROUP_N, num_n - n_first);
    Unit unit;
    unit.m = r / width;
    unit.n = n_first + r % width;
    unit.k_begin = split * k_per_split;
    unit.k_end = min(k_blocks, unit.k_begin + k_per_split);
    return unit;
  }
};

// Epilogue geometry: each pass stages PASS_COLS output columns of the warpgroup's 64 rows, then
// every thread moves 16-byte chunks: chunk t % CHUNKS_PER_ROW of rows t / CHUNKS_PER_ROW + i *
// ROWS_PER_STEP for i < STEPS (the same rows in every pass).
template <int BN, Epilogue EPI, typename OutT>
struct Epi {
  static constexpr int OUT_COLS = EPI == Epilogue::SwiGLU ? BN / 2 : BN;
  static constexpr int ROW_COLS = STAGING_ROW_BYTES / (int)sizeof(OutT);
  static constexpr int PASS_COLS = ROW_COLS < OUT_COLS ? ROW_COLS : OUT_COLS;
  static constexpr int CHUNK_ELEMS = 16 / sizeof(OutT);
  static constexpr int CHUNKS_PER_ROW = PASS_COLS / CHUNK_ELEMS;
  static constexpr int ROWS_PER_STEP = 128 / CHUNKS_PER_ROW;
  static constexpr int STEPS = 64 / ROWS_PER_STEP;
  static_assert(OUT_COLS % PASS_COLS == 0 && PASS_COLS % 8 == 0, "whole passes of 8-column groups");
};

DEV void store_pair(unsigned char* dst, float v0, float v1, Bf16* tag) {
  *reinterpret_cast<u32*>(dst) = pack2(tag, v0, v1);
}
DEV void store_pair(unsigned char* dst, float v0, float v1, F16* tag) {
  *reinterpret_cast<u32*>(dst) = pack2(tag, v0, v1);
}
DEV void store_pair(unsigned char* dst, float v0, float v1, float*) {
  *reinterpret_cast<float2*>(dst) = make_float2(v0, v1);
}

// The x rows a gathering producer thread copies for M tile `m`: token[i] for tile row
// threadIdx.x / 4 + 32 i, -1 for padding rows.
template <int BM, int ROWS>
DEV void gather_tokens(int (&token)[ROWS], const int* __restrict__ permuted_to_expanded, int m,
                       int top_k) {
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    const int expanded = permuted_to_expanded[m * BM + threadIdx.x / 4 + 32 * i];
    token[i] = expanded >= 0 ? expanded / top_k : -1;
  }
}

// A gathering producer thread's share of one stage's K block `kb`: 16-byte chunks t % 4 and
// t % 4 + 4 of its rows (padding rows skipped: their results are unused) into the 128-byte
// swizzled tile. A warp's copy instruction reads 64 contiguous bytes of 8 rows.
template <int ROWS, typename Elem>
DEV void gather_stage(unsigned char* tile, const Elem* __restrict__ x, const int (&token)[ROWS],
                      int K, int kb) {
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int chunk = threadIdx.x % 4 + 4 * half;
    const int col = kb * BK + chunk * 8;
    const u32 bytes = col < K ? 16 : 0;  // K % 8 == 0: a chunk is all in or all past K
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      const int r = threadIdx.x / 4 + 32 * i;
      // the 128-byte swizzle: chunk c of row r sits at chunk c ^ (r % 8)
      if (token[i] >= 0)
        cp_async_16(tile + r * BK * ELEM_BYTES + ((chunk ^ (r % 8)) * 16),
                    x + (i64)token[i] * K + (bytes ? col : 0), bytes);
    }
  }
}

// GEMM1 of the fused path clears GEMM2's output with its producer warpgroup's spare threads.
DEV void clear_vectors(Vec16* __restrict__ zero, i64 count) {
  const Vec16 zeros = {{0u, 0u, 0u, 0u}};
  for (i64 v = (i64)blockIdx.x * 128 + threadIdx.x; v < count; v += (i64)gridDim.x * 128)
    zero[v] = zeros;
}

// Epilogue, registers -> staging for one pass: bias, SwiGLU or router scale, conversion. The
// warpgroup's fragment rows 16 * warp + lane / 4 (+8) land in staging rows of STAGING_PITCH bytes.
template <int BN, Epilogue EPI, typename OutT, bool HAS_BIAS, typename Elem>
DEV void stage_pass(const float (&acc)[BN / 2], int pass, int first_col, int N,
                    const Elem* __restrict__ expert_bias, const float (&row_scale)[2],
                    unsigned char* staging, int warp, int lane) {
  using E = Epi<BN, EPI, OutT>;
#pragma unroll
  for (int g = 0; g < E::PASS_COLS / 8; ++g) {
    const int j8 = pass * (E::PASS_COLS / 8) + g;  // 8-column group of the output tile
    const int col = first_col + j8 * 8 + 2 * (lane % 4);
    const bool col_ok = col < N;
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      float v[2];
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const float x = acc[4 * j8 + 2 * half + q];
        if (EPI == Epilogue::SwiGLU) {
          const float up = acc[4 * (j8 + BN / 16) + 2 * half + q];
          const float bg = HAS_BIAS && col_ok ? to_float(expert_bias[col + q]) : 0.0f;
          const float bu = HAS_BIAS && col_ok ? to_float(expert_bias[N + col + q]) : 0.0f;
          v[q] = silu(x + bg) * (up + bu);
        } else {
          const float b = HAS_BIAS && col_ok ? to_float(expert_bias[col + q]) : 0.0f;
          v[q] = row_scale[half] * (x + b);
        }
      }
      store_pair(staging + (16 * warp + lane / 4 + 8 * half) * STAGING_PITCH +
                     (g * 8 + 2 * (lane % 4)) * (int)sizeof(OutT),
                 v[0], v[1], (OutT*)nullptr);
    }
  }
}

template <typename Elem, int BM, int BN, int STAGES, Epilogue EPI, typename OutT>
DEV void grouped_gemm(const TmaDesc* a_desc, const Elem* __restrict__ x, const TmaDesc* b_desc,
                      const Elem* __restrict__ bias, const int* __restrict__ tile_expert,
                      const int* __restrict__ expert_offsets, int num_local_experts,
                      const int* __restrict__ permuted_to_expanded,
                      const float* __restrict__ topk_weights, OutT* __restrict__ out, int K, int N,
                      int top_k, int k_splits, Vec16* __restrict__ zero, i64 zero_vectors) {
  constexpr bool GATHER_A = EPI == Epilogue::SwiGLU;  // A: x's rows (else a_desc's boxes)
  using L = Layout<BM, BN, STAGES>;
  using S = Split<BM, BN>;
  using E = Epi<S::WG_N, EPI, OutT>;  // one warpgroup's epilogue
  constexpr int TILE_OUT_COLS = Epi<BN, EPI, OutT>::OUT_COLS;
  constexpr int ACC = S::WG_N / 2;
  constexpr int GATHER_ROWS_PER_THREAD = BM / GATHER_ROWS_PER_PASS;

  // 1024-byte alignment: the 128-byte swizzle repeats every 1024 bytes (TMA and wgmma agree on
  // the pattern only from such a base).
  extern __shared__ __align__(1024) unsigned char smem[];
  u64* inputs_ready = reinterpret_cast<u64*>(smem + L::BARRIER_OFFSET);
  u64* stage_free = inputs_ready + STAGES;

  const int warpgroup = threadIdx.x / 128;
  if (threadIdx.x == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(&inputs_ready[s], GATHER_A ? 1 + 128 : 1);  // + each gathering producer thread
      mbar_init(&stage_free[s], CONSUMER_WARPS);
    }
    mbar_init_fence();
  }
  __syncthreads();

  Schedule sched;
  sched.num_m = expert_offsets[num_local_experts] / BM;
  sched.num_n = (N + TILE_OUT_COLS - 1) / TILE_OUT_COLS;
  sched.k_blocks = (K + BK - 1) / BK;
  sched.k_splits = k_splits;
  sched.k_per_split = (sched.k_blocks + k_splits - 1) / k_splits;
  const int w_rows = EPI == Epilogue::SwiGLU ? 2 * N : N;

  if (warpgroup == 0) {
    regs_dealloc<PRODUCER_REGS>();
    // ---- the producer: thread 0 waits for a free stage, loads B (GEMM2: and A's BM-row box) by
    // TMA; in GEMM1 the whole warpgroup waits too, then copies the tile's x rows (gather_stage).
    if (GATHER_A || threadIdx.x == 0) {
      if (threadIdx.x == 0) {
        if (!GATHER_A) tma_prefetch_desc(a_desc);
        tma_prefetch_desc(b_desc);
      }
      RingState<STAGES> ring;
      for (int u = blockIdx.x; u < sched.count(); u += gridDim.x) {
        const Unit unit = sched.unit(u);
        const int b_row = tile_expert[unit.m] * w_rows + unit.n * TILE_OUT_COLS;
        int token[GATHER_A ? GATHER_ROWS_PER_THREAD : 1];
        if (GATHER_A) gather_tokens<BM>(token, permuted_to_expanded, unit.m, top_k);
        for (int kb = unit.k_begin; kb < unit.k_end; ++kb, ring.advance()) {
          u64* bar = &inputs_ready[ring.stage];
          unsigned char* a_tile = smem + L::A_OFFSET + ring.stage * L::A_STAGE_BYTES;
          unsigned char* b_tile = smem + L::B_OFFSET + ring.stage * L::B_STAGE_BYTES;
          mbar_wait(&stage_free[ring.stage], ring.phase ^ 1);
          if (threadIdx.x == 0) {
            mbar_arrive_expect_tx(bar, (GATHER_A ? 0 : L::A_STAGE_BYTES) + L::B_STAGE_BYTES);
            if (EPI == Epilogue::SwiGLU) {
              // Each warpgroup's slice of B: its WG_N/2 gate rows, then the matching up rows.
              constexpr int HALF_SLICE = S::WG_N / 2;
#pragma unroll
              for (int s = 0; s < S::SLICES; ++s) {
                unsigned char* slice = b_tile + s * S::WG_N * BK * ELEM_BYTES;
                const int gate_row = b_row + s * HALF_SLICE;
                tma_load_2d(slice, b_desc, bar, kb * BK, gate_row);
                tma_load_2d(slice + HALF_SLICE * BK * ELEM_BYTES, b_desc, bar, kb * BK,
                            gate_row + N);
              }
            } else {
              tma_load_2d(b_tile, b_desc, bar, kb * BK, b_row);
              tma_load_2d(a_tile, a_desc, bar, kb * BK, unit.m * BM);
            }
          }
          if (GATHER_A) {
            gather_stage(a_tile, x, token, K, kb);
            cp_async_mbar_arrive_noinc(bar);
          }
        }
      }
    }
    clear_vectors(zero, zero_vectors);  // once the loads are issued
    cp_async_wait<0>();
    return;
  }

  // ---- consumers: warpgroup c computes its part of each tile (Split) --------------------------
  regs_alloc<CONSUMER_REGS>();
  const int c = warpgroup - 1;
  const int t = threadIdx.x % 128, lane = t % 32, warp = t / 32;
  unsigned char* staging = smem + L::STAGING_OFFSET + c * 64 * STAGING_PITCH;
  float acc[ACC];
  RingState<STAGES> ring;
  for (int u = blockIdx.x; u < sched.count(); u += gridDim.x) {
    const Unit unit = sched.unit(u);
    // The epilogue's row lookups are issued before the main loop, which hides their latency:
    // the slots of this thread's write-out rows, and (ScatterAdd) of its fragment rows, whose
    // router weights load once the first MMAs are issued.
    const int row_base = unit.m * BM + S::a_row(c);
    const int first_col = unit.n * TILE_OUT_COLS + S::slice(c) * E::OUT_COLS;
    int out_expanded[E::STEPS];
#pragma unroll
    for (int i = 0; i < E::STEPS; ++i)
      out_expanded[i] =
          permuted_to_expanded[row_base + t / E::CHUNKS_PER_ROW + i * E::ROWS_PER_STEP];
    int frag_expanded[2];
    float row_scale[2] = {1.0f, 1.0f};
    if (EPI == Epilogue::ScatterAdd) {
#pragma unroll
      for (int half = 0; half < 2; ++half)
        frag_expanded[half] = permuted_to_expanded[row_base + 16 * warp + lane / 4 + 8 * half];
    }
    for (int kb = unit.k_begin; kb < unit.k_end; ++kb, ring.advance()) {
      mbar_wait(&inputs_ready[ring.stage], ring.phase);
      if (GATHER_A) fence_proxy_async_smem();  // cp.async wrote A through the generic proxy
      const u64 a = smem_desc_sw128(smem + L::A_OFFSET + ring.stage * L::A_STAGE_BYTES +
                                    S::a_row(c) * BK * ELEM_BYTES);
      const u64 b = smem_desc_sw128(smem + L::B_OFFSET + ring.stage * L::B_STAGE_BYTES +
                                    S::b_row(c) * BK * ELEM_BYTES);
      wgmma_fence();
#pragma unroll
      for (int k16 = 0; k16 < BK / 16; ++k16) {
        wgmma_m64nNk16<S::WG_N>(acc, smem_desc_advance_k16(a, k16), smem_desc_advance_k16(b, k16),
                                kb > unit.k_begin || k16 > 0, (Elem*)nullptr);
      }
      wgmma_commit();
      if (EPI == Epilogue::ScatterAdd && kb == unit.k_begin) {
#pragma unroll
        for (int half = 0; half < 2; ++half)
          row_scale[half] = frag_expanded[half] >= 0 ? topk_weights[frag_expanded[half]] : 0.0f;
      }
      wgmma_wait<0>();  // keeping a batch in flight (wait<1>, the stage freed a batch later)
                        // measured no faster (docs/PERF.md)
      if (lane == 0) mbar_arrive(&stage_free[ring.stage]);
    }

    // ---- epilogue: registers -> staging (scaled, biased, converted) -> 16-byte global ops -----
    const int expert = tile_expert[unit.m];
    const Elem* expert_bias = bias && unit.k_begin == 0 ? bias + (i64)expert * w_rows : nullptr;
    OutT* dst_row[E::STEPS];  // of this thread's write-out rows; null for padding rows
#pragma unroll
    for (int i = 0; i < E::STEPS; ++i) {
      const int p = row_base + t / E::CHUNKS_PER_ROW + i * E::ROWS_PER_STEP;
      const i64 row = EPI == Epilogue::ScatterAdd ? out_expanded[i] / top_k : p;
      dst_row[i] = out_expanded[i] >= 0 ? out + row * N : nullptr;
    }
#pragma unroll
    for (int pass = 0; pass < E::OUT_COLS / E::PASS_COLS; ++pass) {
      // The bias-free case (the usual one) gets its own copy, free of per-element bias checks.
      if (expert_bias) {
        stage_pass<S::WG_N, EPI, OutT, true>(acc, pass, first_col, N, expert_bias, row_scale,
                                             staging, warp, lane);
      } else {
        stage_pass<S::WG_N, EPI, OutT, false>(acc, pass, first_col, N, expert_bias, row_scale,
                                              staging, warp, lane);
      }
      named_barrier_sync(1 + c, 128);
      const int chunk = t % E::CHUNKS_PER_ROW;
      const int col = first_col + pass * E::PASS_COLS + chunk * E::CHUNK_ELEMS;
#pragma unroll
      for (int i = 0; i < E::STEPS; ++i) {
        if (!dst_row[i] || col >= N) continue;
        const int r = t / E::CHUNKS_PER_ROW + i * E::ROWS_PER_STEP;
        const Vec16 v = *reinterpret_cast<const Vec16*>(staging + r * STAGING_PITCH + chunk * 16);
        if (EPI == Epilogue::ScatterAdd) {
          red_add_16(dst_row[i] + col, v);
        } else {
          st_global_16(dst_row[i] + col, v);
        }
      }
      named_barrier_sync(1 + c, 128);
    }
  }
}

}  // namespace sm90

// Entry points: one per (dtype, BM, BN, variant), instantiated by grouped_gemm_m{64,128}.cu.
// Launch: a persistent grid of at most one CTA per SM, THREADS threads, Layout<BM, BN,
// STAGES>::BYTES of dynamic shared memory; the host side (moefuse/backends.py) mirrors the names
// and geometry. GEMM1 takes x (gathered rows), GEMM2 the TMA descriptor of h.
#define MOEFUSE_SM90_ENTRY(NAME, ELEM, BM, BN, STAGES, EPI, OUT, A_PARAM, A_DESC, X)           \
  extern "C" __global__ void __launch_bounds__(sm90::THREADS, 1)                               \
      NAME(A_PARAM, const __grid_constant__ TmaDesc b_desc, const ELEM* bias,                  \
           const int* tile_expert, const int* expert_offsets, int num_local_experts,           \
           const int* permuted_to_expanded, const float* topk_weights, OUT* out, int K, int N, \
           int top_k, int k_splits, Vec16* zero, i64 zero_vectors) {                           \
    sm90::grouped_gemm<ELEM, BM, BN, STAGES, sm90::Epilogue::EPI, OUT>(                        \
        A_DESC, X, &b_desc, bias, tile_expert, expert_offsets, num_local_experts,              \
        permuted_to_expanded, topk_weights, out, K, N, top_k, k_splits, zero, zero_vectors);   \
  }
#define MOEFUSE_SM90_GEMM1(NAME, ELEM, BM, BN, STAGES) \
  MOEFUSE_SM90_ENTRY(NAME, ELEM, BM, BN, STAGES, SwiGLU, ELEM, const ELEM* x, nullptr, x)
#define MOEFUSE_SM90_GEMM2(NAME, ELEM, BM, BN, STAGES, EPI, OUT)                                   \
  MOEFUSE_SM90_ENTRY(NAME, ELEM, BM, BN, STAGES, EPI, OUT, const __grid_constant__ TmaDesc a_desc, \
                     &a_desc, (const ELEM*)nullptr)

#define MOEFUSE_SM90_ENTRIES(TAG, ELEM, BM, BN, STAGES)                                          \
  MOEFUSE_SM90_GEMM1(sm90_gemm1_swiglu_##TAG##_m##BM##_n##BN, ELEM, BM, BN, STAGES)              \
  MOEFUSE_SM90_GEMM2(sm90_gemm2_store_##TAG##_m##BM##_n##BN, ELEM, BM, BN, STAGES, Store, ELEM)  \
  MOEFUSE_SM90_GEMM2(sm90_gemm2_scatter_##TAG##_m##BM##_n##BN##_out_##TAG, ELEM, BM, BN, STAGES, \
                     ScatterAdd, ELEM)                                                           \
  MOEFUSE_SM90_GEMM2(sm90_gemm2_scatter_##TAG##_m##BM##_n##BN##_out_f32, ELEM, BM, BN, STAGES,   \
                     ScatterAdd, float)
