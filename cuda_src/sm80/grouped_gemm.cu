// Portable grouped GEMM for the MoE expert layers (sm_80 and newer): mma.sync m16n8k16 tensor-core
// MMAs fed from a STAGES-deep cp.async shared-memory ring.
//
// One CTA computes a BM x BN tile of one expert. The routing plan pads every expert's segment of
// the permuted rows to a multiple of BM, so M tile `i` covers permuted rows [i*BM, (i+1)*BM) of
// expert tile_expert[i] (-1: no work). Rows whose permuted_to_expanded entry is -1 are padding:
// they load as zeros and are never stored.
//
//   GEMM1 gated (gather):     h[p, j] = gated_activation(x[tok] . w1[e, g_j] + b1[e, g_j],
//                                                       x[tok] . w1[e, u_j] + b1[e, u_j])
//   GEMM1 relu2 (gather):     h[p, j] = relu(x[tok] . w1[e, j] + b1[e, j])^2
//   GEMM2 (store):            y[p, n] = h[p] . w2[e, n] + b2[e, n]
//   GEMM2 (scatter-add):      out[tok, n] += topk_weight[p] * (h[p] . w2[e, n] + b2[e, n])
// where tok = permuted_to_expanded[p] / top_k, and gate j's and up j's rows of the expert's 2I
// rows of w1 (and b1) are g_j = j * gate_up_step, u_j = g_j + up_offset (GateArgs).
#include "../common/activation.cuh"
#include "../common/ptx.cuh"
#include "../common/spec.cuh"

namespace sm80 {

constexpr int BN = 128;  // accumulator columns per CTA (gated: 64 gate + 64 up, alternating by 8)
constexpr int BK = 32;
constexpr int STAGES = 4;
constexpr int THREADS = 256;  // 8 warps: 2 along M x 4 along N
constexpr int SMEM_LD =
    BK + 8;  // padded 80-byte rows: the 8 rows of an ldmatrix hit distinct banks
constexpr int CHUNKS_PER_ROW = BK / 8;  // 16-byte cp.async chunks per tile row

enum class ASource { GatherTokens, PermutedRows };
// GEMM1: Gated (gate and up accumulators paired into one output column) or Relu2; GEMM2: Store
// (rows for the finalize) or ScatterAdd (router-weighted rows added into the tokens' outputs).
enum class Epilogue { Gated, Relu2, Store, ScatterAdd };
DEV constexpr bool is_gated(Epilogue e) { return e == Epilogue::Gated; }
// Output columns per CTA: a gated tile's BN accumulator columns make BN / 2 outputs.
DEV constexpr int out_cols(Epilogue e) { return is_gated(e) ? BN / 2 : BN; }

template <int BM>
struct Smem {
  static constexpr int A_STAGE = BM * SMEM_LD;
  static constexpr int B_STAGE = BN * SMEM_LD;
  static constexpr int BYTES = STAGES * (A_STAGE + B_STAGE) * 2;
};

// Row of the expert's w1 feeding accumulator column `r` of a gated tile: groups of 8 columns
// alternate gate/up, so each thread ends up holding the gate and up value of the same output
// column.
DEV int gated_weight_row(int r, int n_tile, int inter, const GateArgs& gate, bool& valid) {
  const int col = n_tile * (BN / 2) + (r >> 4) * 8 + (r & 7);
  valid = col < inter;
  return col * gate.gate_up_step + ((r >> 3) & 1) * gate.up_offset;
}

// The tile's copies into one ring stage: each thread moves the same rows' 16-byte chunk `chunk` at
// every K step, so their sources are resolved once (padding rows and columns past N load zeros).
template <typename Elem, int BM, ASource A_SRC, Epilogue EPI>
struct StageLoader {
  static constexpr int A_LOADS = BM * CHUNKS_PER_ROW / THREADS;
  static constexpr int B_LOADS = BN * CHUNKS_PER_ROW / THREADS;
  static_assert(A_LOADS >= 1 && B_LOADS >= 1, "tile too small for the loader");
  const Elem* a_row[A_LOADS];
  const Elem* b_row[B_LOADS];
  bool a_ok[A_LOADS], b_ok[B_LOADS];
  const Elem *a_base, *w_base;
  int chunk, K;

  DEV StageLoader(const Elem* a, const Elem* w, const int* permuted_to_expanded, int expert,
                  int m_base, int n_tile, int k, int n, int top_k, const GateArgs& gate)
      : a_base(a), w_base(w), chunk(threadIdx.x % CHUNKS_PER_ROW), K(k) {
    const int tid = threadIdx.x;
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
      const int p = m_base + tid / CHUNKS_PER_ROW + i * (THREADS / CHUNKS_PER_ROW);
      const int expanded = permuted_to_expanded[p];
      a_ok[i] = expanded >= 0;
      const i64 src_row = A_SRC == ASource::GatherTokens ? expanded / top_k : p;
      a_row[i] = a + (a_ok[i] ? src_row * K : 0) + chunk * 8;
    }
    const int w_rows = is_gated(EPI) ? 2 * n : n;
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
      const int r = tid / CHUNKS_PER_ROW + i * (THREADS / CHUNKS_PER_ROW);
      int row;
      if (is_gated(EPI)) {
        row = gated_weight_row(r, n_tile, n, gate, b_ok[i]);
      } else {
        row = n_tile * BN + r;
        b_ok[i] = row < n;
      }
      b_row[i] = w + ((i64)expert * w_rows + (b_ok[i] ? row : 0)) * K + chunk * 8;
    }
  }

  DEV void load(Elem* sa, Elem* sb, int k_tile) const {
    const bool k_ok = k_tile * BK + chunk * 8 < K;  // K % 8 == 0: a chunk is wholly in or out
#pragma unroll
    for (int i = 0; i < A_LOADS; ++i) {
      const int r = threadIdx.x / CHUNKS_PER_ROW + i * (THREADS / CHUNKS_PER_ROW);
      const bool ok = a_ok[i] && k_ok;
      cp_async_16(sa + r * SMEM_LD + chunk * 8, ok ? a_row[i] + k_tile * BK : a_base, ok ? 16 : 0);
    }
#pragma unroll
    for (int i = 0; i < B_LOADS; ++i) {
      const int r = threadIdx.x / CHUNKS_PER_ROW + i * (THREADS / CHUNKS_PER_ROW);
      const bool ok = b_ok[i] && k_ok;
      cp_async_16(sb + r * SMEM_LD + chunk * 8, ok ? b_row[i] + k_tile * BK : w_base, ok ? 16 : 0);
    }
  }
};

// One BK step of a warp's WM x 32 tile from a stage: ldmatrix fragments, then the MMAs.
template <typename Elem, int MT, int NT>
DEV void mma_stage(float (&acc)[MT][NT][4], const Elem* sa, const Elem* sb, int wm, int wn) {
  const int lane = threadIdx.x % 32;
#pragma unroll
  for (int kk = 0; kk < BK; kk += 16) {
    u32 a_frag[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int row = wm * MT * 16 + mt * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
      ldmatrix_x4(a_frag[mt], sa + row * SMEM_LD + kk + (lane / 16) * 8);
    }
    u32 b_frag[NT / 2][4];
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
      const int row = wn * 32 + np * 16 + (lane % 8) + (lane / 16) * 8;
      ldmatrix_x4(b_frag[np], sb + row * SMEM_LD + kk + ((lane / 8) % 2) * 8);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
        mma_16816(acc[mt][nt], a_frag[mt], b_frag[nt / 2][(nt % 2) * 2],
                  b_frag[nt / 2][(nt % 2) * 2 + 1], (Elem*)nullptr);
  }
}

// Epilogue. Accumulator (mt, nt, q) of this thread is tile row wm*WM + mt*16 + lane/4 + 8*(q/2),
// tile column wn*32 + nt*8 + 2*(lane%4) + q%2; (q, q+1) for even q are adjacent columns. A warp's
// 8-column output group o is accumulator group o, or for a gated tile the pair 2o (gate) and
// 2o + 1 (up) (gated_weight_row), so every variant finishes and writes column pairs alike.
template <typename Elem, Epilogue EPI, typename OutT, int MT, int NT>
DEV void epilogue(const float (&acc)[MT][NT][4], const Elem* __restrict__ expert_bias,
                  const GateArgs& gate, const int* __restrict__ permuted_to_expanded,
                  const float* __restrict__ topk_weights, OutT* __restrict__ out, int m_base,
                  int n_tile, int N, int top_k, int wm, int wn) {
  constexpr int OUT_NT = is_gated(EPI) ? NT / 2 : NT;
  const int lane = threadIdx.x % 32;
  // v + bias[index]; without a bias v itself (v + 0.0f is no identity for -0: it would stay).
  auto plus_bias = [&](float v, int index) {
    return expert_bias ? v + to_float(expert_bias[index]) : v;
  };
  // Output column `col` from accumulator q of group o: the gated activation of gate and up, else
  // acc + bias (relu^2 of it for Relu2).
  auto finish = [&](int mt, int o, int q, int col) {
    if constexpr (is_gated(EPI)) {
      const int gate_row = col * gate.gate_up_step;
      return gated_activation(gate.act, plus_bias(acc[mt][2 * o][q], gate_row),
                              plus_bias(acc[mt][2 * o + 1][q], gate_row + gate.up_offset));
    } else {
      const float v = plus_bias(acc[mt][o][q], col);
      return EPI == Epilogue::Relu2 ? relu2(v) : v;
    }
  };
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int p = m_base + wm * MT * 16 + mt * 16 + lane / 4 + half * 8;
      const int expanded = permuted_to_expanded[p];
      if (expanded < 0) continue;
      // ScatterAdd adds into the token's output row; the others store row p (h or y).
      const float scale = EPI == Epilogue::ScatterAdd ? topk_weights[expanded] : 1.0f;
      const i64 out_row = EPI == Epilogue::ScatterAdd ? (i64)(expanded / top_k) : (i64)p;
#pragma unroll
      for (int o = 0; o < OUT_NT; ++o) {
        const int col = n_tile * out_cols(EPI) + wn * OUT_NT * 8 + o * 8 + 2 * (lane % 4);
        if (col >= N) continue;
        const float v0 = finish(mt, o, 2 * half, col), v1 = finish(mt, o, 2 * half + 1, col + 1);
        OutT* dst = out + out_row * N + col;
        if constexpr (EPI == Epilogue::ScatterAdd) {
          red_add2(dst, scale * v0, scale * v1);
        } else {
          *reinterpret_cast<u32*>(dst) = pack2((Elem*)nullptr, v0, v1);
        }
      }
    }
  }
}

// The kernel: the tile's loader, the STAGES-deep cp.async ring around the MMA steps, the epilogue.
template <typename Elem, int BM, ASource A_SRC, Epilogue EPI, typename OutT>
DEV void grouped_gemm(const Elem* __restrict__ a, const Elem* __restrict__ w,
                      const Elem* __restrict__ bias, const int* __restrict__ tile_expert,
                      const int* __restrict__ permuted_to_expanded,
                      const float* __restrict__ topk_weights, OutT* __restrict__ out, int K, int N,
                      int top_k, const GateArgs& gate) {
  constexpr int MT = BM / 2 / 16;  // warp tile: BM / 2 x 32
  constexpr int NT = 4;
  static_assert(MT >= 1, "BM must be a multiple of 32");

  const int expert = tile_expert[blockIdx.x];
  if (expert < 0) return;
  const int m_base = blockIdx.x * BM;
  const int n_tile = blockIdx.y;
  const int warp = threadIdx.x / 32, wm = warp / 4, wn = warp % 4;

  extern __shared__ __align__(128) unsigned char smem_raw[];
  Elem* smem_a = reinterpret_cast<Elem*>(smem_raw);
  Elem* smem_b = smem_a + STAGES * Smem<BM>::A_STAGE;
  const StageLoader<Elem, BM, A_SRC, EPI> loader(a, w, permuted_to_expanded, expert, m_base, n_tile,
                                                 K, N, top_k, gate);
  auto stage_a = [&](int stage) { return smem_a + stage * Smem<BM>::A_STAGE; };
  auto stage_b = [&](int stage) { return smem_b + stage * Smem<BM>::B_STAGE; };

  float acc[MT][NT][4];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[mt][nt][q] = 0.0f;

  const int k_tiles = (K + BK - 1) / BK;
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    if (s < k_tiles) loader.load(stage_a(s), stage_b(s), s);
    cp_async_commit();
  }
  for (int kt = 0; kt < k_tiles; ++kt) {
    cp_async_wait<STAGES - 2>();  // stage kt has landed (for this thread's copies)
    __syncthreads();              // ... for every thread's; and stage kt-1 is free to refill
    const int next = kt + STAGES - 1;
    if (next < k_tiles) loader.load(stage_a(next % STAGES), stage_b(next % STAGES), next);
    cp_async_commit();
    mma_stage<Elem, MT, NT>(acc, stage_a(kt % STAGES), stage_b(kt % STAGES), wm, wn);
  }
  cp_async_wait<0>();

  const int w_rows = is_gated(EPI) ? 2 * N : N;
  const Elem* expert_bias = bias ? bias + (i64)expert * w_rows : nullptr;
  epilogue<Elem, EPI, OutT, MT, NT>(acc, expert_bias, gate, permuted_to_expanded, topk_weights, out,
                                    m_base, n_tile, N, top_k, wm, wn);
}

}  // namespace sm80

// An sm80 entry point: MOEFUSE_KERNEL (common/spec.cuh) with the launch shape every kernel here
// shares. PARAMS is macro-expanded before MOEFUSE_KERNEL publishes (stringizes) it, so it may use
// MOEFUSE_GATE_PARAMS_gated.
#define MOEFUSE_SM80_KERNEL(NAME, TAGS, PARAMS, ...) \
  MOEFUSE_KERNEL(NAME, sm80::THREADS, 2, TAGS, PARAMS, __VA_ARGS__)

// Entry points: one per (dtype, BM, variant). Launch: grid (max_tiles, N / out_cols), THREADS
// threads, Smem<BM>::BYTES of dynamic shared memory, all published with the entry
// (common/spec.cuh). GATE: gated (GEMM1 also takes its GateArgs) or plain.
#define MOEFUSE_GEMM_ENTRY(NAME, OP, ELEM, BM, ASRC, EPI, OUT, TAG, OUT_TAG, GATE)             \
  MOEFUSE_SM80_KERNEL(NAME, "family=sm80 op=" #OP " elem=" #TAG " out=" #OUT_TAG,              \
                      (const ELEM* a, const ELEM* w, const ELEM* bias, const int* tile_expert, \
                       const int* permuted_to_expanded, const float* topk_weights, OUT* out,   \
                       int K, int N, int top_k MOEFUSE_GATE_PARAMS_##GATE),                    \
                      {"smem_bytes", sm80::Smem<BM>::BYTES}, {"tile_m", BM},                   \
                      {"out_cols", sm80::out_cols(sm80::Epilogue::EPI)}) {                     \
    sm80::grouped_gemm<ELEM, BM, sm80::ASource::ASRC, sm80::Epilogue::EPI, OUT>(               \
        a, w, bias, tile_expert, permuted_to_expanded, topk_weights, out, K, N, top_k,         \
        MOEFUSE_GATE_ARGS_##GATE);                                                             \
  }

#define MOEFUSE_GEMM_ENTRIES(TAG, ELEM, BM)                                                        \
  MOEFUSE_GEMM_ENTRY(gemm1_gated_##TAG##_m##BM, gemm1_gated, ELEM, BM, GatherTokens, Gated, ELEM,  \
                     TAG, TAG, gated)                                                              \
  MOEFUSE_GEMM_ENTRY(gemm1_relu2_##TAG##_m##BM, gemm1_relu2, ELEM, BM, GatherTokens, Relu2, ELEM,  \
                     TAG, TAG, plain)                                                              \
  MOEFUSE_GEMM_ENTRY(gemm2_store_##TAG##_m##BM, gemm2_store, ELEM, BM, PermutedRows, Store, ELEM,  \
                     TAG, TAG, plain)                                                              \
  MOEFUSE_GEMM_ENTRY(gemm2_scatter_##TAG##_m##BM##_out_##TAG, gemm2_scatter, ELEM, BM,             \
                     PermutedRows, ScatterAdd, ELEM, TAG, TAG, plain)                              \
  MOEFUSE_GEMM_ENTRY(gemm2_scatter_##TAG##_m##BM##_out_f32, gemm2_scatter, ELEM, BM, PermutedRows, \
                     ScatterAdd, float, TAG, f32, plain)

MOEFUSE_GEMM_ENTRIES(bf16, Bf16, 64)
MOEFUSE_GEMM_ENTRIES(bf16, Bf16, 128)
MOEFUSE_GEMM_ENTRIES(f16, F16, 64)
MOEFUSE_GEMM_ENTRIES(f16, F16, 128)
