// The row-major Hopper grouped GEMMs (grouped_gemm.cuh) on fp8 e4m3 operands with f32 scales
// (docs/DESIGN.md D30). Weights e4m3 [E, N, K] K-major, w = q * w_scale, one scale per
// 128 x 128 block (w_scale [E, ceil(N/128), ceil(K/128)]) or per expert matrix (its strides 0).
// GEMM1's A is x_q [T, H] gathered by row, x_s per token per 128 of H (or per token: stride 0),
// produced by quant.cu; GEMM2's A is h_q [rows, I] by TMA, h_s [ceil(I/64), rows] (MN-major) per
// token per 64 of I, written by GEMM1's epilogue.
//
// The same producer, ring, schedule and epilogue write-out as the 16-bit kernels; what differs:
//   - each stage also carries the tile rows' A scales (a slot after the B tiles): GEMM1's gathering
//     threads copy x_s[token, kb] with 4-byte cp.async beside the row's chunks (the stage's
//     cp.async arrival covers them), GEMM2's thread 0 loads h_s's (BM rows x 2 groups) box by TMA;
//   - the main loop promotes (consume_promoted): per 128-K block (GEMM2: per 64), fresh
//     accumulators, then final += (a_scale[row] * w_scale) * acc in f32 registers. A warpgroup's
//     weight rows lie in one 128-row scale block per slice (GEMM1: its gate and its up slice;
//     I % 64 == 0), so its weight scales are uniform per stage: __ldg'd;
//   - GEMM1's epilogue (Gated only) quantises h per row per 64 features (a warpgroup's, held by a
//     quad of threads per row): amax, e4m3 through staging as 16-byte rows, h_s by lane % 4 == 0.
//     GEMM2's Store and ScatterAdd are the 16-bit kernels' write_tile on `final`.
#pragma once
#include "grouped_gemm.cuh"

namespace sm90 {
namespace rows {

// rows::Config on e4m3 with a scale slot per stage (A's rows x GROUPS K groups of f32).
template <int BM_, int BN_, int STAGES_, Epilogue EPI_, typename OutT_>
struct Fp8Config : Config<E4m3, BM_, BN_, STAGES_, EPI_, OutT_, false> {
  using Base = Config<E4m3, BM_, BN_, STAGES_, EPI_, OutT_, false>;
  // A-scale groups per K block: h is scaled per 64 of K (GEMM1's warpgroups own 64 features).
  static constexpr int GROUPS = Base::GATHER_A ? 1 : 2;
  static constexpr int A_SCALE_GROUP = Base::BK / GROUPS;
  static constexpr int SCALE_SLOT_BYTES = Base::BM * GROUPS * (int)sizeof(float);
  using Tiles = ScaledStageTiles<typename Base::Tiles, SCALE_SLOT_BYTES, STAGES_>;
  static constexpr int STAGING_OFFSET = Tiles::END;
  static constexpr int BARRIER_OFFSET =
      STAGING_OFFSET + CONSUMER_WARPGROUPS * WGMMA_M * STAGING_PITCH;
  static constexpr int SMEM_BYTES = BARRIER_OFFSET + StageRing<STAGES_>::BYTES;
  static_assert(SMEM_BYTES <= SMEM_PER_BLOCK, "exceeds the shared memory of a block");
  static_assert(EPI_ == Epilogue::Gated || !Base::GATED, "gated fp8: gate and up halves only");
  static constexpr int H_SCALE_GROUP = 64;  // GEMM1's output: h_s per 64 features of a row
  static_assert(!Base::GATED || Base::WG_OUT_COLS == H_SCALE_GROUP,
                "GEMM1: a warpgroup's features are one h scale group");
  static_assert(Base::GATHER_A || A_SCALE_GROUP == H_SCALE_GROUP, "GEMM2 reads GEMM1's h_s");
  static_assert(Base::WG_N <= 128, "a slice's weight rows lie in one 128-row scale block");
  static_assert(Base::GATHER_A || GROUPS * Base::BM * (int)sizeof(float) % 16 == 0, "TMA box");
};

// The numbers an fp8 entry point publishes: the 16-bit ones, and its A scales' geometry.
// clang-format off
#define MOEFUSE_SM90_FP8_INTS(C)                                                        \
  MOEFUSE_SM90_ROWS_INTS(C), {"a_scale_group", C::A_SCALE_GROUP},                       \
  {"scale_groups", C::GROUPS}, {"scale_slot_bytes", C::SCALE_SLOT_BYTES}
// clang-format on

// Args plus the scales: element (row, block) of x_s at x_scale[token * x_scale_row + kb *
// x_scale_k], of w_scale at [expert * w_scale_expert + (weight row / 128) * w_scale_rows + kb *
// w_scale_k]; h_s[g][p] at h_scale[g * h_scale_rows + p] (GEMM1 writes it, GEMM2 reads it through
// a_scale_desc).
template <typename Cfg>
struct Fp8Args : Args<Cfg> {
  const float* x_scale;
  int x_scale_row, x_scale_k;
  const TmaDesc* a_scale_desc;
  const float* w_scale;
  int w_scale_rows, w_scale_k, w_scale_expert;
  float* h_scale;
  int h_scale_rows;
};

// The producer: the 16-bit kernels' TileLoads, after this stage's A-row scales (issued first so
// that GEMM1's cp.async arrival on the stage covers them; GEMM2's box adds its bytes).
template <typename Cfg>
DEV void produce_fp8(const Fp8Args<Cfg>& args, const Schedule& sched, unsigned char* smem,
                     StageRing<Cfg::STAGES> ring) {
  regs_dealloc<PRODUCER_REGS>();
  if (Cfg::GATHER_A || threadIdx.x == 0) {
    if (threadIdx.x == 0) {
      if (!Cfg::GATHER_A) {
        tma_prefetch_desc(args.a_desc);
        tma_prefetch_desc(args.a_scale_desc);
      }
      tma_prefetch_desc(args.b_desc);
    }
    produce(ring, sched, [&](const Unit& unit) {
      TileLoads<Cfg> loads{args, ring, smem, unit.m, unit.n};
      if (Cfg::GATHER_A)
        gather_tokens<Cfg::BM>(loads.token, args.permuted_to_expanded, unit.m, args.top_k);
      loads.expert = args.tile_expert[unit.m];
      return [&, loads, m = unit.m](int kb) {
        float* slot = Cfg::Tiles::scales(smem, ring.stage());
        if constexpr (Cfg::GATHER_A) {
          // Thread t copies the scale of its rows' (t % 4)-th (padding rows skipped): one copy
          // per thread, at a 32-bit offset (x_s has < 2^31 elements): the producer's 40
          // registers hold no more (with copies per row or 64-bit products GEMM1 spills).
          const int i = threadIdx.x % 4;
          int token = -1;
#pragma unroll
          for (int j = 0; j < Cfg::GATHER_ROWS; ++j) token = i == j ? loads.token[j] : token;
          if (token >= 0)
            cp_async_4(slot + threadIdx.x / 4 + GATHER_ROWS_PER_PASS * i,
                       args.x_scale + (token * args.x_scale_row + kb * args.x_scale_k));
        } else {
          mbar_expect_tx(ring.ready_bar(), Cfg::SCALE_SLOT_BYTES);
          tma_load_2d(slot, args.a_scale_desc, ring.ready_bar(), m * Cfg::BM, kb * Cfg::GROUPS);
        }
        loads(kb);
      };
    });
  }
}

// GEMM1's epilogue: h = act(gate + b1, up + b1) of the warpgroup's 64 features per row, quantised
// per row (h_q e4m3 through staging, 16-byte stores; h_s[first_col / 64][p]). Columns >= N are
// left out of the amax (the bias makes act(0) non-zero) and never stored, nor is the scale of a
// slice wholly past N (the last N tile of m64n256 when I % 128 == 64).
template <typename Cfg>
DEV void write_quantised(const Fp8Args<Cfg>& args, const Unit& unit, const ConsumerThread& me,
                         const float (&final)[Cfg::ACC], const TileRows<Cfg>& rows,
                         unsigned char* staging) {
  using P = typename Cfg::Pass;
  static_assert(Cfg::PASSES == 1, "a row's 64 e4m3 features in one pass");
  constexpr int GROUPS8 = Cfg::WG_OUT_COLS / 8;
  const GateArgs& gate = args.gate;
  const float* expert_bias =
      args.bias ? args.bias + (i64)args.tile_expert[unit.m] * 2 * args.N : nullptr;
  auto bias = [&](int index, bool ok) { return expert_bias && ok ? expert_bias[index] : 0.0f; };
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int r = 16 * me.warp + me.lane / 4 + 8 * half;  // the fragment row in the slab
    float v[GROUPS8][2];
    float amax = 0.0f;
#pragma unroll
    for (int j8 = 0; j8 < GROUPS8; ++j8) {
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        const int col = rows.first_col + 8 * j8 + 2 * (me.lane % 4) + q;
        const bool ok = col < args.N;
        v[j8][q] = gated_activation(
            gate.act, final[4 * j8 + 2 * half + q] + bias(col * gate.gate_up_step, ok),
            final[4 * (j8 + Cfg::WG_N / 16) + 2 * half + q] +
                bias(col * gate.gate_up_step + gate.up_offset, ok));
        if (ok) amax = fmaxf(amax, fabsf(v[j8][q]));
      }
    }
    const E4m3Scale s = e4m3_scale(quad_max(amax));
    unsigned char* row = staging + r * STAGING_PITCH;
#pragma unroll
    for (int j8 = 0; j8 < GROUPS8; ++j8)
      *reinterpret_cast<u16*>(row + 8 * j8 + 2 * (me.lane % 4)) =
          pack_e4m3x2(v[j8][0] * s.inv, v[j8][1] * s.inv);
    // padding rows too (harmless: GEMM2 never writes them); not a warpgroup's slice past N
    if (me.lane % 4 == 0 && rows.first_col < args.N)
      args.h_scale[(i64)(rows.first_col / Cfg::H_SCALE_GROUP) * args.h_scale_rows + rows.row_base +
                   r] = s.scale;
  }
  consumer_sync(me.c);
  write_out<P, false, E4m3>(
      staging, me.t, rows.first_col, args.N, [&](int i, int) { return rows.out_expanded[i] >= 0; },
      [&](int i, int r) { return args.out + (i64)(rows.row_base + r) * args.N; });
  consumer_sync(me.c);
}

// Consumer warpgroup c: rows a_row(c) of A against B's slice(c), promoted per K group.
template <typename Cfg>
DEV void consume_fp8(const Fp8Args<Cfg>& args, const Schedule& sched, unsigned char* smem,
                     StageRing<Cfg::STAGES> ring, int role) {
  using T = typename Cfg::Tiles;
  regs_alloc<CONSUMER_REGS>();
  const ConsumerThread me = consumer_thread(role);
  unsigned char* staging = smem + Cfg::STAGING_OFFSET + me.c * WGMMA_M * STAGING_PITCH;
  float acc[Cfg::ACC], final[Cfg::ACC];
  for_each_unit(sched, [&](const Unit& unit) {
    TileRows<Cfg> rows(args, unit, me);
    // The weight scales of this slice's rows (gated: its gate rows, then its up rows), per kb. A
    // slice wholly past N (the last N tile of m64n256 when I % 128 == 64) reads the last column's,
    // rows that exist, for sums never stored (its own would lie past w_scale's end: initcheck).
    const int col = min(rows.first_col, args.N - 1);
    const float* w_scale[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int w_row = Cfg::GATED ? col * args.gate.gate_up_step + h * args.gate.up_offset : col;
      w_scale[h] = args.w_scale + (i64)args.tile_expert[unit.m] * args.w_scale_expert +
                   (i64)(w_row / 128) * args.w_scale_rows;
    }
    consume_promoted<Cfg::WG_N, Cfg::GROUPS, Cfg::GATHER_A>(
        ring, acc, final, unit.k_begin, unit.k_end, me.lane,
        [&](u32 stage) {
          constexpr int ROW_BYTES = Cfg::BK * Cfg::ELEM_BYTES;
          return Operands{T::a(smem, stage) + Cfg::a_row(me.c) * ROW_BYTES,
                          T::b(smem, stage) + Cfg::b_row(me.c) * ROW_BYTES};
        },
        [&](u32 stage, int kb) {
          const float* slot =
              T::scales(smem, stage) + Cfg::a_row(me.c) + 16 * me.warp + me.lane / 4;
          float ws[2];
#pragma unroll
          for (int h = 0; h < 2; ++h) ws[h] = __ldg(w_scale[h] + (i64)kb * args.w_scale_k);
          Promotion<Cfg::GROUPS> p;
#pragma unroll
          for (int g = 0; g < Cfg::GROUPS; ++g)
#pragma unroll
            for (int half = 0; half < 2; ++half)
#pragma unroll
              for (int h = 0; h < 2; ++h) p.f[g][half][h] = slot[g * Cfg::BM + 8 * half] * ws[h];
          return p;
        },
        [&](int kb) {
          if (Cfg::SCATTER && kb == unit.k_begin) rows.load_scales(args.topk_weights);
        });
    if constexpr (Cfg::GATED) {
      write_quantised(args, unit, me, final, rows, staging);
    } else {
      write_tile(args, unit, me, final, rows, staging);
    }
  });
}

// The kernel: the 16-bit kernels' body with the fp8 producer and consumers.
template <typename Cfg>
DEV void grouped_gemm_fp8(const Fp8Args<Cfg>& args) {
  run_kernel<Cfg>(
      args, [](auto&&... a) { produce_fp8(a...); }, [](auto&&... a) { consume_fp8(a...); });
}

}  // namespace rows
}  // namespace sm90
