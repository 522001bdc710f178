// Hopper (sm_90a) grouped GEMM with swapped operands: the weights are the MMA's M side (BW rows
// per tile, BW / 2 per consumer warpgroup in m64 subtiles) and an expert's tokens its N side, sized
// per tile to the rows there are (a multiple of 16 up to MAX_ROWS). The padding rows of the plan
// are never loaded or multiplied: an expert of r rows costs ceil(r / 16) * 16 columns of MMA, where
// the row-major kernels (grouped_gemm.cuh) pay whole 64- or 128-row tiles. Each expert's rows split
// into ceil(r / MAX_ROWS) chunks of equal size, so an expert of up to MAX_ROWS rows reads each
// weight tile once (the unit order: swapped_units.cuh). Two geometries (Geometry below): 128 x 256
// and 256 x 192. The pipeline is pipeline.cuh's.
//
// GEMM1: A is w1 seen through a 5-D TMA map, so that each 16-row group of a subtile's 64 rows
// holds 8 gate rows, then the 8 matching up rows (the map's strides read concatenated or
// interleaved gate and up rows alike). Thread (warp w, lane l) then holds the gate and
// the up value of feature 8w + l/4 for the same tokens (the gated activation needs no exchange).
// Weights stored [K, N] (W_MN: gpt-oss's layout, gate and up interleaved) are read in place as an
// MN-major A in 64-row boxes, whose rows no map can regroup: fragment rows 2j and 2j + 1 (lanes l
// and l ^ 4) hold gate j and up j, and the pair is finished after one shuffle (GatedPairs). B
// is the chunk's rows of x_perm (x in permuted order, written by permute.cu's gather_rows:
// gathering 256 rows per stage with cp.async starved the MMAs, docs/DESIGN.md D11). GEMM2: A is BW
// rows of w2 (output features), B the chunk's rows of h. B arrives by TMA in 32-row boxes, only as
// many as the chunk's rows need. Epilogues as in grouped_gemm.cuh, finished in registers (bias,
// activation, router weight) and transposed on the way: the (feature, token) fragments are staged
// as OutT [token][feature] in shared memory (16-bit outputs by stmatrix.trans), then each thread
// moves 16-byte vectors of one token's features to global memory (epilogue.cuh).
#pragma once
#include "epilogue.cuh"
#include "pipeline.cuh"
#include "swapped_units.cuh"

namespace sm90 {
namespace swapped {

// The two tile geometries (moefuse/heuristics.py, choose_sm90_swapped_tiles): 128 weight rows
// (one m64 subtile per consumer warpgroup) against up to 256 token rows, 4 stages; or 256 (two
// subtiles each) against up to 192, 3 stages. The wide one asks the L2 for ~22% fewer bytes per
// FLOP; its chunks are narrower.
template <int BW_, int MAX_ROWS_, int STAGES_>
struct Geometry {
  static constexpr int BW = BW_;              // weight rows per tile
  static constexpr int MAX_ROWS = MAX_ROWS_;  // token rows per chunk: the MMAs' N
  static constexpr int STAGES = STAGES_;
  static constexpr int SUBTILES = BW / (CONSUMER_WARPGROUPS * WGMMA_M);  // per consumer warpgroup
  // The wide consumers hold 2 x 96 accumulators; its producer only issues TMA.
  static constexpr int PRODUCER_REGS = SUBTILES == 1 ? sm90::PRODUCER_REGS : 24;
  static constexpr int CONSUMER_REGS = SUBTILES == 1 ? sm90::CONSUMER_REGS : 240;
  static_assert(REGS_FIT<PRODUCER_REGS, CONSUMER_REGS>, "setmaxnreg within the launch's registers");
  static_assert(MAX_ROWS % 32 == 0 && MAX_ROWS <= 256, "whole stmatrix groups, one MMA's N");
};
using Narrow = Geometry<128, 256, 4>;
using Wide = Geometry<256, 192, 3>;

constexpr int TOKEN_BOX = 32;     // token rows (of x_perm or h) per TMA box
constexpr int GATE_UP_GROUP = 8;  // GEMM1: w1 rows per gate (up) group: a fragment's 8-row half
constexpr int STAGING_BYTES = 128 * (32 * 2 + 16);  // per warpgroup: 128 tokens x 32 bf16, padded

// One entry point's geometry.
template <typename G, typename Elem_, Epilogue EPI_, typename OutT_, bool W_MN_>
struct Config {
  using Elem = Elem_;
  using OutT = OutT_;
  static constexpr int BK = Operand<Elem>::BK;  // a stage's K block: one 128-byte row
  static constexpr int ELEM_BYTES = Operand<Elem>::BYTES;
  static constexpr Epilogue EPI = EPI_;
  static constexpr bool W_MN = W_MN_;  // weights stored [K, N]: A multiplied MN-major
  static constexpr bool GATED = is_gated(EPI);
  static constexpr bool PAIRS = EPI == Epilogue::GatedPairs;
  static_assert(!is_gemm1(EPI) || EPI == (W_MN ? Epilogue::GatedPairs : Epilogue::Gated),
                "GEMM1 gated: K-major gate and up rows grouped by the map, MN-major ones paired");
  static constexpr bool SCATTER = EPI == Epilogue::ScatterAdd;
  static constexpr int BW = G::BW, MAX_ROWS = G::MAX_ROWS, STAGES = G::STAGES;
  static constexpr int SUBTILES = G::SUBTILES;
  static constexpr int PRODUCER_REGS = G::PRODUCER_REGS, CONSUMER_REGS = G::CONSUMER_REGS;
  static constexpr int BLOCK_OUT = GATED ? BW / 2 : BW;  // output features per weight block
  static constexpr int SUB_OUT = BLOCK_OUT / (CONSUMER_WARPGROUPS * SUBTILES);  // per subtile
  static constexpr int W_ROWS_PER_N = GATED ? 2 : 1;       // w rows per output feature: gate, up
  static constexpr int W_BOX_ROWS = W_MN ? MN_BLOCK : BW;  // MN-major boxes; K-major GEMM2's of w2
  static constexpr int W_BOX_GROUPS = BW / (2 * GATE_UP_GROUP);  // GEMM1's 5-D box of w1
  static constexpr int TOKEN_BOX = swapped::TOKEN_BOX, MAX_EXPERTS = swapped::MAX_EXPERTS;
  static constexpr int GATE_UP_GROUP = swapped::GATE_UP_GROUP;

  using Tiles = StageTiles<BW * BK * ELEM_BYTES, MAX_ROWS * BK * ELEM_BYTES, STAGES>;
  static constexpr int STAGING_OFFSET = Tiles::END;
  // per warpgroup: a chunk's output rows and router weights
  static constexpr int ROWS_OFFSET = STAGING_OFFSET + CONSUMER_WARPGROUPS * STAGING_BYTES;
  static constexpr int ROWS_BYTES = MAX_ROWS * (int)(sizeof(int) + sizeof(float));
  static constexpr int EXPERTS_OFFSET = ROWS_OFFSET + CONSUMER_WARPGROUPS * ROWS_BYTES;
  static constexpr int BARRIER_OFFSET = EXPERTS_OFFSET + Experts::BYTES;
  static constexpr int SMEM_BYTES = BARRIER_OFFSET + StageRing<STAGES>::BYTES;
  static_assert(SMEM_BYTES <= SMEM_PER_BLOCK, "exceeds the shared memory of a block");

  // The epilogue's staging: rows of one token's SUB_OUT finished outputs, PITCH bytes apart (16
  // bytes of padding: 8 consecutive rows hit distinct banks), PASS_ROWS tokens per pass.
  static constexpr int PITCH = SUB_OUT * (int)sizeof(OutT) + 16;
  static constexpr int PASS_ROWS = STAGING_BYTES / PITCH / 32 * 32;
  static constexpr int PASSES = (MAX_ROWS + PASS_ROWS - 1) / PASS_ROWS;
  static constexpr int ROW_BYTES = SUB_OUT * (int)sizeof(OutT);
  using Pass = StagedPass<ROW_BYTES, PASS_ROWS, PITCH>;
  static_assert(PASS_ROWS >= 32, "whole stmatrix groups per pass");
  // A stmatrix covers 4 token groups of 8 (GEMM1: one 8-feature matrix each) or 2 (GEMM2: the
  // fragment's two 8-feature halves each). Matrix m: token group j0 + group(m), feature half(m).
  static constexpr int GROUPS_PER_STORE = GATED ? 4 : 2;
  DEV static int group(int m) { return GATED ? m : m / 2; }
  DEV static int half(int m) { return GATED ? 0 : m % 2; }
};

// The numbers an entry point with Config C publishes (common/spec.cuh): all of them, then the
// weights' box: K-major GEMM1's gate/up groups, or rows.
// clang-format off
#define MOEFUSE_SM90_SWAPPED_INTS(C)                                                   \
  {"smem_bytes", C::SMEM_BYTES}, {"weight_rows", C::BW}, {"max_rows", C::MAX_ROWS},    \
  {"tile_k", C::BK}, {"stages", C::STAGES}, {"token_box", C::TOKEN_BOX},               \
  {"block_out", C::BLOCK_OUT}, {"max_experts", C::MAX_EXPERTS}
#define MOEFUSE_SM90_SWAPPED_GATE_UP_INTS(C)                                           \
  {"w_box_groups", C::W_BOX_GROUPS}, {"gate_up_group", C::GATE_UP_GROUP}
#define MOEFUSE_SM90_SWAPPED_W_BOX_INTS(C) {"w_box_rows", C::W_BOX_ROWS}
// clang-format on

// The kernel's arguments, as the entry point declares them.
template <typename Cfg>
struct Args : PlanArgs<typename Cfg::Elem, typename Cfg::OutT> {
  const TmaDesc *w_desc, *tokens_desc;
  const int* expert_counts;
  int busiest_guard;  // the launch's geometry guard: see grouped_gemm
  GateArgs gate;      // GEMM1
};

// The producer: thread 0 waits for a free stage, then loads the weight tile and the chunk's token
// rows by TMA.
template <typename Cfg>
DEV void produce_chunks(const Args<Cfg>& args, const Experts& experts, unsigned char* smem,
                        StageRing<Cfg::STAGES> ring) {
  using T = typename Cfg::Tiles;
  regs_dealloc<Cfg::PRODUCER_REGS>();
  if (threadIdx.x == 0) {
    tma_prefetch_desc(args.w_desc);
    tma_prefetch_desc(args.tokens_desc);
    produce(ring, experts, [&](const Chunk& tile) {
      const int boxes = (tile.rows + TOKEN_BOX - 1) / TOKEN_BOX;
      return [&, tile, boxes](int kb) {
        constexpr int BK = Cfg::BK, BOX_BYTES = TOKEN_BOX * BK * Cfg::ELEM_BYTES;
        unsigned char* a_tile = T::a(smem, ring.stage());
        unsigned char* b_tile = T::b(smem, ring.stage());
        u64* bar = ring.expect_bytes(T::A_STAGE_BYTES + boxes * BOX_BYTES);
        if (Cfg::W_MN) {
          load_mn_boxes<Cfg::BW, typename Cfg::Elem>(a_tile, args.w_desc, bar, kb,
                                                     tile.block * Cfg::BW, -1, tile.expert);
        } else if (Cfg::GATED) {
          // (k, row in group, gate | up, GATE_UP_GROUP-feature group, expert): W_BOX_GROUPS groups
          tma_load_5d(a_tile, args.w_desc, bar, kb * BK, 0, 0, tile.block * Cfg::W_BOX_GROUPS,
                      tile.expert);
        } else {
          tma_load_2d(a_tile, args.w_desc, bar, kb * BK,
                      tile.expert * args.N + tile.block * Cfg::BW);
        }
        for (int box = 0; box < boxes; ++box)
          tma_load_2d(b_tile + box * BOX_BYTES, args.tokens_desc, bar, kb * BK,
                      tile.first_row + box * TOKEN_BOX);
      };
    });
  }
}

// ScatterAdd: the expanded indices of a consumer thread's two rows of the chunk (t, t + 128),
// looked up before the main loop; their router weights load once the first MMAs are issued.
struct ChunkRows {
  int expanded[2] = {-1, -1};
  float scale[2] = {0.0f, 0.0f};

  DEV ChunkRows(const int* __restrict__ permuted_to_expanded, const Chunk& tile, int t) {
#pragma unroll
    for (int i = 0; i < 2; ++i)
      if (t + WARPGROUP_THREADS * i < tile.rows)
        expanded[i] = permuted_to_expanded[tile.first_row + t + WARPGROUP_THREADS * i];
  }
  DEV void load_scales(const float* __restrict__ topk_weights) {
#pragma unroll
    for (int i = 0; i < 2; ++i) scale[i] = expanded[i] >= 0 ? topk_weights[expanded[i]] : 0.0f;
  }
  // Publishes the rows' output rows and weights to the warpgroup (out_row, out_scale).
  DEV void publish(int* out_row, float* out_scale, const Chunk& tile, int t, int top_k) const {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if (t + WARPGROUP_THREADS * i < tile.rows) {
        out_row[t + WARPGROUP_THREADS * i] = expanded[i] / top_k;
        out_scale[t + WARPGROUP_THREADS * i] = scale[i];
      }
    }
  }
};

// Epilogue (1): the finished values of the 4 matrices of one stmatrix, token groups from j0 on.
// Fragment row 16 warp + lane/4 (+8) is GEMM1's gate (up) of feature 8 warp + lane/4, GEMM2's
// feature 16 warp + lane/4 (+8); its bias is row_bias[0] ([1]).
template <typename Cfg>
DEV void finish_matrices(float (&v)[4][2], const float (&acc)[Cfg::MAX_ROWS / 2], int j0,
                         const float (&row_bias)[2], const GatedActivation& act,
                         const float* out_scale, int lane) {
#pragma unroll
  for (int m = 0; m < 4; ++m) {
    const int j = j0 + Cfg::group(m), h = Cfg::half(m);
    float token_scale[2] = {1.0f, 1.0f};
    if (Cfg::SCATTER) {
      const float2 w = *reinterpret_cast<const float2*>(out_scale + 8 * j + 2 * (lane % 4));
      token_scale[0] = w.x;
      token_scale[1] = w.y;
    }
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      if constexpr (Cfg::GATED) {
        v[m][q] =
            gated_activation(act, acc[4 * j + q] + row_bias[0], acc[4 * j + 2 + q] + row_bias[1]);
      } else {
        v[m][q] = finish_linear<Cfg::EPI>(acc[4 * j + 2 * h + q], row_bias[h], token_scale[q]);
      }
    }
  }
}

// Epilogue (1) + (2) for one pass: the pass's tokens of a subtile, finished and staged
// [token][feature], a stmatrix (4 matrices) at a time.
template <typename Cfg>
DEV void stage_pass(unsigned char* staging, const float (&acc)[Cfg::MAX_ROWS / 2], int pass,
                    int rows, const float (&row_bias)[2], const GatedActivation& act,
                    const float* out_scale, int warp, int lane) {
  using OutT = typename Cfg::OutT;
#pragma unroll
  for (int s = 0; s < Cfg::PASS_ROWS / (8 * Cfg::GROUPS_PER_STORE); ++s) {
    const int j0 = (pass * Cfg::PASS_ROWS) / 8 + s * Cfg::GROUPS_PER_STORE;  // first token group
    if (8 * j0 >= Cfg::MAX_ROWS || 8 * j0 >= rows) break;
    float v[4][2];
    finish_matrices<Cfg>(v, acc, j0, row_bias, act, out_scale, lane);
    auto place = [&](int m) {
      return Place{8 * (j0 + Cfg::group(m)) - pass * Cfg::PASS_ROWS,
                   (Cfg::GATED ? 8 * warp : 16 * warp + 8 * Cfg::half(m)) * (int)sizeof(OutT)};
    };
    stage_transposed<OutT, Cfg::PITCH>(staging, v, place, lane);
  }
}

// Epilogue (1) + (2) for one pass of a PAIRS subtile: fragment rows 2j and 2j + 1 (lanes l and
// l ^ 4) hold gate j and up j of the same tokens. Each lane sends its partner the value the partner
// lacks: the gate lane finishes the pair's first token (column 2 (l % 4)), the up lane its second,
// and each stages its value [token][feature].
template <typename Cfg>
DEV void stage_pairs_pass(unsigned char* staging, const float (&acc)[Cfg::MAX_ROWS / 2], int pass,
                          int rows, const float (&row_bias)[2], const GatedActivation& act,
                          int warp, int lane) {
  const bool up = (lane / 4) % 2;
#pragma unroll
  for (int s = 0; s < Cfg::PASS_ROWS / 8; ++s) {
    const int j = pass * Cfg::PASS_ROWS / 8 + s;  // token group
    if (8 * j >= Cfg::MAX_ROWS || 8 * j >= rows) break;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float first = acc[4 * j + 2 * h] + row_bias[h];
      const float second = acc[4 * j + 2 * h + 1] + row_bias[h];
      const float other = __shfl_xor_sync(0xffffffffu, up ? first : second, 4);
      const float v =
          up ? gated_activation(act, other, second) : gated_activation(act, first, other);
      using OutT = typename Cfg::OutT;
      const int token = 8 * s + 2 * (lane % 4) + up, feature = 8 * warp + 4 * h + lane / 8;
      stage_one<OutT>(staging + token * Cfg::PITCH + feature * (int)sizeof(OutT), v);
    }
  }
}

// The epilogue of one m64 subtile (its SUB_OUT features): pass by pass through the warpgroup's
// staging, then 16-byte global vectors of one token's features.
template <typename Cfg>
DEV void write_subtile(const Args<Cfg>& args, const Chunk& tile, const ConsumerThread& me, int sub,
                       const float (&acc)[Cfg::MAX_ROWS / 2],
                       const typename Cfg::Elem* __restrict__ expert_bias, unsigned char* staging,
                       const int* out_row, const float* out_scale) {
  const int first_col = tile.block * Cfg::BLOCK_OUT + (Cfg::SUBTILES * me.c + sub) * Cfg::SUB_OUT;
  // Grouped gate and up rows: the bias of feature first_col + 8 warp + lane / 4's gate (h 0) and up
  // (h 1); else that of fragment row 16 warp + lane / 4 + 8 h's weight row (PAIRS: interleaved).
  float row_bias[2] = {0.0f, 0.0f};
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    int index;
    bool inside;
    if constexpr (Cfg::GATED && !Cfg::PAIRS) {
      const int feature = first_col + 8 * me.warp + me.lane / 4;
      inside = feature < args.N;
      index = feature * args.gate.gate_up_step + h * args.gate.up_offset;
    } else {
      index = Cfg::W_ROWS_PER_N * first_col + 16 * me.warp + me.lane / 4 + 8 * h;
      inside = index < Cfg::W_ROWS_PER_N * args.N;
    }
    if (expert_bias && inside) row_bias[h] = to_float(expert_bias[index]);
  }
#pragma unroll
  for (int pass = 0; pass < Cfg::PASSES; ++pass) {
    if (pass * Cfg::PASS_ROWS >= tile.rows) break;
    if constexpr (Cfg::PAIRS) {
      stage_pairs_pass<Cfg>(staging, acc, pass, tile.rows, row_bias, args.gate.act, me.warp,
                            me.lane);
    } else {
      stage_pass<Cfg>(staging, acc, pass, tile.rows, row_bias, args.gate.act, out_scale, me.warp,
                      me.lane);
    }
    consumer_sync(me.c);
    const int first_token = pass * Cfg::PASS_ROWS;
    write_out<typename Cfg::Pass, Cfg::SCATTER, typename Cfg::OutT>(
        staging, me.t, first_col, args.N, [&](int, int r) { return first_token + r < tile.rows; },
        [&](int, int r) {
          const int token = first_token + r;
          return args.out + (i64)(Cfg::SCATTER ? out_row[token] : tile.first_row + token) * args.N;
        });
    consumer_sync(me.c);
  }
}

// Consumer warpgroup c multiplies weight rows [BW/2 c, BW/2 (c + 1)) of each tile.
template <typename Cfg>
DEV void consume_chunks(const Args<Cfg>& args, const Experts& experts, unsigned char* smem,
                        StageRing<Cfg::STAGES> ring, int role) {
  using T = typename Cfg::Tiles;
  regs_alloc<Cfg::CONSUMER_REGS>();
  const ConsumerThread me = consumer_thread(role);
  unsigned char* staging = smem + Cfg::STAGING_OFFSET + me.c * STAGING_BYTES;
  int* out_row = reinterpret_cast<int*>(smem + Cfg::ROWS_OFFSET + me.c * Cfg::ROWS_BYTES);
  float* out_scale = reinterpret_cast<float*>(out_row + Cfg::MAX_ROWS);
  float acc[Cfg::SUBTILES][Cfg::MAX_ROWS / 2];
  for_each_unit(experts, [&](const Chunk& tile) {
    ChunkRows rows(args.permuted_to_expanded, tile, me.t);
    with_width<Cfg::MAX_ROWS>(tile.rows, [&](auto width) {
      consume<decltype(width)::value, typename Cfg::Elem, false, Cfg::W_MN, false>(
          ring, acc, tile.k_begin, tile.k_end, me.lane,
          [&](u32 stage) {
            constexpr int ROW_BYTES = Cfg::BK * Cfg::ELEM_BYTES;
            return Operands{T::a(smem, stage) + Cfg::SUBTILES * me.c * WGMMA_M * ROW_BYTES,
                            T::b(smem, stage)};
          },
          [&](int kb) {
            if (Cfg::SCATTER && kb == tile.k_begin) rows.load_scales(args.topk_weights);
          });
    });
    // ---- epilogue: subtile by subtile through the warpgroup's staging
    const typename Cfg::Elem* expert_bias =
        args.bias ? args.bias + (i64)tile.expert * Cfg::W_ROWS_PER_N * args.N : nullptr;
    if (Cfg::SCATTER) {
      rows.publish(out_row, out_scale, tile, me.t, args.top_k);
      consumer_sync(me.c);
    }
#pragma unroll
    for (int sub = 0; sub < Cfg::SUBTILES; ++sub)
      write_subtile(args, tile, me, sub, acc[sub], expert_bias, staging, out_row, out_scale);
  });
}

// The kernel: the stage ring and the expert tables, then the producer warpgroup and the consumers.
template <typename Cfg>
DEV void grouped_gemm(const Args<Cfg>& args) {
  unsigned char* smem = dynamic_smem();
  StageRing<Cfg::STAGES> ring(smem + Cfg::BARRIER_OFFSET);
  Experts experts(smem + Cfg::EXPERTS_OFFSET, args.num_local_experts,
                  (args.N + Cfg::BLOCK_OUT - 1) / Cfg::BLOCK_OUT, (args.K + Cfg::BK - 1) / Cfg::BK);
  if (threadIdx.x == 0) ring.init(1);
  if (threadIdx.x < WARP_THREADS)
    experts.build<Cfg::MAX_ROWS>(args.expert_counts, args.expert_offsets);
  __syncthreads();
  // The host may launch both geometries, each guarded on the busiest expert's rows; the one whose
  // guard fails leaves at once (guard g > 0: run iff busiest <= g; g < 0: iff busiest > -g).
  const int guard = args.busiest_guard;
  if (guard != 0 && (*experts.busiest <= abs(guard)) != (guard > 0)) return;
  run_roles<false>(
      args.zero, args.zero_bytes, [&] { produce_chunks(args, experts, smem, ring); },
      [&](int role) { consume_chunks(args, experts, smem, ring, role); });
}

}  // namespace swapped
}  // namespace sm90

// Entry points, instantiated by swapped_{bf16,f16}.cu (narrow tiles), swapped_wide_{bf16,f16}.cu
// and their _mn variants (weights stored [K, N]), each with its contract (common/spec.cuh) from its
// swapped::Config, sm90::entry::NAME. Launch: a persistent grid of at most one CTA per SM. GEMM1
// takes the maps of w1 and x_perm, GEMM2 those of w2 and h.
#define MOEFUSE_SM90_SWAPPED_ENTRY(NAME, GEOMETRY_TAG, GEOMETRY, OP, TAG, ELEM, EPI, OUT_TAG, OUT, \
                                   W_TAG, W_MN, W_INTS, GATE)                                      \
  namespace sm90::entry {                                                                          \
  using NAME =                                                                                     \
      sm90::swapped::Config<sm90::swapped::GEOMETRY, ELEM, sm90::Epilogue::EPI, OUT, W_MN>;        \
  }                                                                                                \
  MOEFUSE_SM90_KERNEL(                                                                             \
      NAME,                                                                                        \
      "family=swapped geometry=" #GEOMETRY_TAG " op=" #OP " elem=" #TAG " out=" #OUT_TAG           \
      " w=" #W_TAG,                                                                                \
      (const __grid_constant__ TmaDesc w_desc, const __grid_constant__ TmaDesc tokens_desc,        \
       const ELEM* bias, const int* expert_counts, MOEFUSE_SM90_PLAN_PARAMS(OUT), Vec16* zero,     \
       i64 zero_bytes, int busiest_guard MOEFUSE_GATE_PARAMS_##GATE),                              \
      MOEFUSE_SM90_SWAPPED_INTS(sm90::entry::NAME), W_INTS(sm90::entry::NAME)) {                   \
    sm90::swapped::grouped_gemm(sm90::swapped::Args<sm90::entry::NAME>{                            \
        MOEFUSE_SM90_PLAN_ARGS, &w_desc, &tokens_desc, expert_counts, busiest_guard,               \
        MOEFUSE_GATE_ARGS_##GATE});                                                                \
  }
// GEMM2, stored or scattered into 16-bit or f32 outputs, on weights of major order W_TAG (k, mn).
#define MOEFUSE_SM90_SWAPPED_GEMM2S(PREFIX, GEOMETRY_TAG, GEOMETRY, TAG, ELEM, W_TAG, W_MN)        \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm2_store_##TAG, GEOMETRY_TAG, GEOMETRY, gemm2_store, TAG, \
                             ELEM, Store, TAG, ELEM, W_TAG, W_MN, MOEFUSE_SM90_SWAPPED_W_BOX_INTS, \
                             plain)                                                                \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm2_scatter_##TAG##_out_##TAG, GEOMETRY_TAG, GEOMETRY,     \
                             gemm2_scatter, TAG, ELEM, ScatterAdd, TAG, ELEM, W_TAG, W_MN,         \
                             MOEFUSE_SM90_SWAPPED_W_BOX_INTS, plain)                               \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm2_scatter_##TAG##_out_f32, GEOMETRY_TAG, GEOMETRY,       \
                             gemm2_scatter, TAG, ELEM, ScatterAdd, f32, float, W_TAG, W_MN,        \
                             MOEFUSE_SM90_SWAPPED_W_BOX_INTS, plain)
// PREFIX: sm90_swapped (Narrow) or sm90_swapped_wide (Wide); GEOMETRY_TAG: narrow or wide.
#define MOEFUSE_SM90_SWAPPED_ENTRIES(PREFIX, GEOMETRY_TAG, GEOMETRY, TAG, ELEM)                    \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm1_gated_##TAG, GEOMETRY_TAG, GEOMETRY, gemm1_gated, TAG, \
                             ELEM, Gated, TAG, ELEM, k, false, MOEFUSE_SM90_SWAPPED_GATE_UP_INTS,  \
                             gated)                                                                \
  MOEFUSE_SM90_SWAPPED_GEMM2S(PREFIX, GEOMETRY_TAG, GEOMETRY, TAG, ELEM, k, false)
// Weights stored [K, N], gate and up interleaved (PREFIX: sm90_swapped_mn, sm90_swapped_wide_mn).
#define MOEFUSE_SM90_SWAPPED_MN_ENTRIES(PREFIX, GEOMETRY_TAG, GEOMETRY, TAG, ELEM)          \
  MOEFUSE_SM90_SWAPPED_ENTRY(PREFIX##_gemm1_gated_pairs_##TAG, GEOMETRY_TAG, GEOMETRY,      \
                             gemm1_gated_pairs, TAG, ELEM, GatedPairs, TAG, ELEM, mn, true, \
                             MOEFUSE_SM90_SWAPPED_W_BOX_INTS, gated)                        \
  MOEFUSE_SM90_SWAPPED_GEMM2S(PREFIX, GEOMETRY_TAG, GEOMETRY, TAG, ELEM, mn, true)
