// Hopper (sm_90a) grouped GEMM for the MoE expert layers: TMA loads into a STAGES-deep shared
// memory ring guarded by mbarriers, wgmma on two consumer warpgroups, one producer warpgroup,
// a persistent grid walking a static tile schedule over the device-side routing plan
// (pipeline.cuh). grouped_gemm_m128.cu and grouped_gemm_m64.cu instantiate the entry points (one
// module each).
//
// M tile i covers permuted rows [i*BM, (i+1)*BM) of expert tile_expert[i], whose segment is padded
// to BM rows. BM = 128: the consumer warpgroups split the tile's rows (64 each, the whole BN
// columns); BM = 64 (decode and small batches: half the padding rows multiplied): they split its
// columns (BN/2 each, all 64 rows). GEMM1's A is x [T, K] itself: the producer warpgroup gathers
// each tile's rows (row permuted_to_expanded[p] / top_k; padding rows skipped) with 16-byte
// cp.async into the swizzled stage. GEMM2's A is h [rows, K], already in permuted order, loaded by
// TMA as BM-row boxes. B is the expert's weights, loaded by TMA through a 3-D map (k, n, expert)
// or, gated, a 4-D one (k, feature, gate | up, expert) whose strides say whether gate and up rows
// are concatenated or interleaved: either is read in place. B_MN: the weights are stored [K, N]
// (transformers' is_transposed), loaded as 64-column boxes and multiplied MN-major. Epilogues (rows
// whose permuted_to_expanded is -1 are padding and never written):
//   Gated:      h[p, j]      = act(acc_gate + b1[e, gate j], acc_up + b1[e, up j])
//               (a tile's B holds BN/2 gate rows, then the BN/2 matching up rows)
//   GatedPairs: the same with gate j and up j in adjacent columns 2j, 2j + 1 of B (weights stored
//               [K, 2I] interleaved, which no TMA map can split: the accumulators pair them)
//   Relu2:      h[p, j]      = relu(acc + b1[e, j])^2
//   Store:      y[p, n]      = acc + b2[e, n]
//   ScatterAdd: out[tok, n] += w(p) * (acc + b2[e, n]), tok = permuted_to_expanded[p] / top_k;
//               K may be split across units (the atomics sum the partials; split 0 adds the bias).
// Each warpgroup's epilogue stages its 64-row slab through shared memory so that every global store
// or reduction is a coalesced 16-byte vector (epilogue.cuh).
#pragma once
#include "epilogue.cuh"
#include "grouped_gemm_units.cuh"
#include "pipeline.cuh"

namespace sm90 {
namespace rows {

constexpr int GATHER_ROWS_PER_PASS = 32;  // of a stage, by the 128 producer threads (4 per row)
constexpr int STAGING_ROW_BYTES = 128;    // epilogue pass: 128 bytes of each of 64 rows
constexpr int STAGING_PITCH = 128 + 16;   // padded: fragment writes hit distinct banks

// The bias type of an element type's kernels: its own, fp32 for e4m3 (biases converted once by the
// host, so one fp8 kernel serves bf16 and fp16 activations).
template <typename Elem>
struct BiasOf {
  using T = Elem;
};
template <>
struct BiasOf<E4m3> {
  using T = float;
};

// One entry point's geometry. How a BM x BN tile is shared by the consumer warpgroups: each issues
// m64 x WG_N MMAs on its rows (A) and columns (B) of the stage.
template <typename Elem_, int BM_, int BN_, int STAGES_, Epilogue EPI_, typename OutT_, bool B_MN_>
struct Config {
  using Elem = Elem_;
  using OutT = OutT_;
  using Bias = typename BiasOf<Elem>::T;
  static constexpr int BM = BM_, BN = BN_, STAGES = STAGES_;
  static constexpr int BK = Operand<Elem>::BK;  // a stage's K block: one 128-byte row
  static constexpr int ELEM_BYTES = Operand<Elem>::BYTES;
  static constexpr Epilogue EPI = EPI_;
  static constexpr bool B_MN = B_MN_;  // B stored [K, N]: multiplied MN-major
  static constexpr bool GATED = is_gated(EPI);
  static constexpr bool HALVES = EPI == Epilogue::Gated;  // B: gate rows, then up rows
  static constexpr bool PAIRS = EPI == Epilogue::GatedPairs;
  static constexpr bool SCATTER = EPI == Epilogue::ScatterAdd;
  static constexpr bool GATHER_A = is_gemm1(EPI);  // A: x's rows by cp.async (else h's TMA boxes)
  static_assert(BM == WGMMA_M || BM == CONSUMER_WARPGROUPS * WGMMA_M, "64- or 128-row tiles");
  static constexpr bool SPLIT_ROWS = BM > WGMMA_M;  // else the warpgroups split the columns
  static constexpr int WG_N = SPLIT_ROWS ? BN : BN / CONSUMER_WARPGROUPS;
  static constexpr int SLICES = BN / WG_N;              // of B's rows (the tile's columns)
  static constexpr int ACC = WG_N / 2;                  // accumulators per thread
  static constexpr int OUT_COLS = GATED ? BN / 2 : BN;  // output columns per tile
  static constexpr int W_ROWS_PER_N = GATED ? 2 : 1;    // w rows per output column: gate, up
  static constexpr int A_BOX_ROWS = BM;
  static constexpr int B_LOAD_N = HALVES ? WG_N / 2 : BN;  // B's N per load: a half slice, or all
  // The TMA box's N extent: one load's rows (K-major), 64-column blocks of it (MN-major).
  static constexpr int B_BOX_ROWS = B_MN ? MN_BLOCK : B_LOAD_N;
  static_assert(B_LOAD_N % B_BOX_ROWS == 0, "MN-major loads are whole 64-column boxes");
  static constexpr int GATHER_ROWS = BM / GATHER_ROWS_PER_PASS;  // per gathering producer thread
  // A warpgroup's epilogue: its WG_OUT_COLS output columns of 64 rows, staged PASS_COLS at a time.
  static constexpr int WG_OUT_COLS = GATED ? WG_N / 2 : WG_N;
  static constexpr int ROW_COLS = STAGING_ROW_BYTES / (int)sizeof(OutT);
  static constexpr int PASS_COLS = ROW_COLS < WG_OUT_COLS ? ROW_COLS : WG_OUT_COLS;
  static constexpr int PASSES = WG_OUT_COLS / PASS_COLS;
  using Pass = StagedPass<PASS_COLS*(int)sizeof(OutT), WGMMA_M, STAGING_PITCH>;
  static_assert(WG_OUT_COLS % PASS_COLS == 0 && PASS_COLS % 8 == 0, "whole 8-column groups");

  using Tiles = StageTiles<BM * BK * ELEM_BYTES, BN * BK * ELEM_BYTES, STAGES>;
  static constexpr int STAGING_OFFSET = Tiles::END;
  static constexpr int BARRIER_OFFSET =
      STAGING_OFFSET + CONSUMER_WARPGROUPS * WGMMA_M * STAGING_PITCH;
  static constexpr int SMEM_BYTES = BARRIER_OFFSET + StageRing<STAGES>::BYTES;
  static_assert(Tiles::B_STAGE_BYTES % 2048 == 0, "whole swizzle atoms per gated half-slice");
  static_assert(WG_N >= 64, "wgmma.cuh has N = 64, 128, 256");
  static_assert(SMEM_BYTES <= SMEM_PER_BLOCK, "exceeds the shared memory of a block");

  DEV static int a_row(int c) { return SPLIT_ROWS ? WGMMA_M * c : 0; }
  DEV static int slice(int c) { return SPLIT_ROWS ? 0 : c; }
  DEV static int b_row(int c) { return slice(c) * WG_N; }
};

// The numbers an entry point with Config C publishes (common/spec.cuh).
// clang-format off
#define MOEFUSE_SM90_ROWS_INTS(C)                                                      \
  {"smem_bytes", C::SMEM_BYTES}, {"tile_m", C::BM}, {"tile_n", C::BN},                 \
  {"out_cols", C::OUT_COLS}, {"tile_k", C::BK}, {"stages", C::STAGES},                 \
  {"a_box_rows", C::A_BOX_ROWS}, {"b_box_rows", C::B_BOX_ROWS}
// clang-format on

// The kernel's arguments, as the entry point declares them.
template <typename Cfg>
struct Args : PlanArgs<typename Cfg::Bias, typename Cfg::OutT> {
  const TmaDesc* a_desc;        // GEMM2: h
  const typename Cfg::Elem* x;  // GEMM1
  const TmaDesc* b_desc;
  const int* tile_expert;
  int k_splits;
  GateArgs gate;  // gated GEMM1
};

template <typename Cfg>
DEV Schedule schedule(const Args<Cfg>& args) {
  Schedule sched;
  sched.num_m = args.expert_offsets[args.num_local_experts] / Cfg::BM;
  sched.num_n = (args.N + Cfg::OUT_COLS - 1) / Cfg::OUT_COLS;
  sched.k_blocks = (args.K + Cfg::BK - 1) / Cfg::BK;
  sched.k_splits = args.k_splits;
  sched.k_per_split = (sched.k_blocks + args.k_splits - 1) / args.k_splits;
  return sched;
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
  using Op = Operand<Elem>;
  constexpr int CHUNK = VEC_BYTES / Op::BYTES;  // elements per 16-byte chunk
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int chunk = threadIdx.x % 4 + 4 * half;
    const int col = kb * Op::BK + chunk * CHUNK;
    const u32 bytes = col < K ? 16 : 0;  // K % CHUNK == 0: a chunk is all in or all past K
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      const int r = threadIdx.x / 4 + 32 * i;
      // the 128-byte swizzle: chunk c of row r sits at chunk c ^ (r % 8)
      if (token[i] >= 0)
        cp_async_16(tile + r * Op::BK * Op::BYTES + ((chunk ^ (r % 8)) * 16),
                    x + (i64)token[i] * K + (bytes ? col : 0), bytes);
    }
  }
}

// B_LOAD_N rows (K-major) or columns (MN-major) of B from `first` on, of expert `expert`'s
// weights (and, HALVES, its gate or up half) into `dst`: one box, or MN-major 64-column boxes
// placed one after another along N.
template <typename Cfg>
DEV void load_b(unsigned char* dst, const TmaDesc* desc, u64* bar, int kb, int first, int half,
                int expert) {
  if constexpr (Cfg::B_MN) {
    load_mn_boxes<Cfg::B_LOAD_N, typename Cfg::Elem>(dst, desc, bar, kb, first,
                                                     Cfg::HALVES ? half : -1, expert);
  } else if (Cfg::HALVES) {
    tma_load_4d(dst, desc, bar, kb * Cfg::BK, first, half, expert);
  } else {
    tma_load_3d(dst, desc, bar, kb * Cfg::BK, first, expert);
  }
}

// The producer's loads of one unit into the current stage: thread 0 loads B (GEMM2: and A's
// BM-row box) by TMA; in GEMM1 every producer thread then copies its share of the tile's x rows.
template <typename Cfg>
struct TileLoads {
  const Args<Cfg>& args;
  const StageRing<Cfg::STAGES>& ring;
  unsigned char* smem;
  int m, n, expert;                                 // the unit's tiles and expert
  int token[Cfg::GATHER_A ? Cfg::GATHER_ROWS : 1];  // GEMM1: gather_tokens

  DEV void operator()(int kb) const {
    using T = typename Cfg::Tiles;
    unsigned char* a_tile = T::a(smem, ring.stage());
    unsigned char* b_tile = T::b(smem, ring.stage());
    if (threadIdx.x == 0) {
      u64* bar = ring.expect_bytes((Cfg::GATHER_A ? 0 : T::A_STAGE_BYTES) + T::B_STAGE_BYTES);
      if (Cfg::HALVES) {
        // Each warpgroup's slice of B: its WG_N/2 gate rows, then the matching up rows.
        constexpr int HALF_BYTES = Cfg::B_LOAD_N * Cfg::BK * Cfg::ELEM_BYTES;
#pragma unroll
        for (int s = 0; s < Cfg::SLICES; ++s) {
          unsigned char* slice = b_tile + s * 2 * HALF_BYTES;
          const int feature = n * Cfg::OUT_COLS + s * Cfg::B_LOAD_N;
          load_b<Cfg>(slice, args.b_desc, bar, kb, feature, 0, expert);
          load_b<Cfg>(slice + HALF_BYTES, args.b_desc, bar, kb, feature, 1, expert);
        }
      } else {
        load_b<Cfg>(b_tile, args.b_desc, bar, kb, n * Cfg::BN, 0, expert);
      }
      if (!Cfg::GATHER_A) tma_load_2d(a_tile, args.a_desc, bar, kb * Cfg::BK, m * Cfg::BM);
    }
    if (Cfg::GATHER_A) {
      gather_stage(a_tile, args.x, token, args.K, kb);
      cp_async_mbar_arrive_noinc(ring.ready_bar());
    }
  }
};

// The producer warpgroup: in GEMM1 all of it takes part (the gather), else thread 0 alone.
template <typename Cfg>
DEV void produce_tiles(const Args<Cfg>& args, const Schedule& sched, unsigned char* smem,
                       StageRing<Cfg::STAGES> ring) {
  regs_dealloc<PRODUCER_REGS>();
  if (Cfg::GATHER_A || threadIdx.x == 0) {
    if (threadIdx.x == 0) {
      if (!Cfg::GATHER_A) tma_prefetch_desc(args.a_desc);
      tma_prefetch_desc(args.b_desc);
    }
    produce(ring, sched, [&](const Unit& unit) {
      TileLoads<Cfg> loads{args, ring, smem, unit.m, unit.n};
      if (Cfg::GATHER_A)
        gather_tokens<Cfg::BM>(loads.token, args.permuted_to_expanded, unit.m, args.top_k);
      // after the gather's lookups: in the other order ptxas spills the producer's 40 registers
      loads.expert = args.tile_expert[unit.m];
      return loads;
    });
  }
}

// A consumer thread's rows of a tile. Their lookups are issued before the main loop, which hides
// their latency: the slots of this thread's write-out rows, and (ScatterAdd) of its fragment rows,
// whose router weights load once the first MMAs are issued (load_scales).
template <typename Cfg>
struct TileRows {
  int row_base, first_col;  // the warpgroup's first permuted row and output column
  int out_expanded[Cfg::Pass::STEPS];
  int frag_expanded[2];
  float row_scale[2] = {1.0f, 1.0f};

  DEV TileRows(const Args<Cfg>& args, const Unit& unit, const ConsumerThread& me)
      : row_base(unit.m * Cfg::BM + Cfg::a_row(me.c)),
        first_col(unit.n * Cfg::OUT_COLS + Cfg::slice(me.c) * Cfg::WG_OUT_COLS) {
    using P = typename Cfg::Pass;
#pragma unroll
    for (int i = 0; i < P::STEPS; ++i)
      out_expanded[i] =
          args.permuted_to_expanded[row_base + me.t / P::CHUNKS_PER_ROW + i * P::ROWS_PER_STEP];
    if (Cfg::SCATTER) {
#pragma unroll
      for (int half = 0; half < 2; ++half)
        frag_expanded[half] =
            args.permuted_to_expanded[row_base + 16 * me.warp + me.lane / 4 + 8 * half];
    }
  }
  DEV void load_scales(const float* __restrict__ topk_weights) {
#pragma unroll
    for (int half = 0; half < 2; ++half)
      row_scale[half] = frag_expanded[half] >= 0 ? topk_weights[frag_expanded[half]] : 0.0f;
  }
};

// Epilogue (1) + (2) for one pass: the finished values (bias, activation or router weight) of the
// pass's columns, converted into staging. The warpgroup's fragment rows 16 * warp + lane / 4 (+8)
// land in staging rows of STAGING_PITCH bytes; fragment column pair 2 (lane % 4) + q of each
// 8-column group j8 holds, Gated: gate j (its up j in group j8 + WG_N / 16), GatedPairs: gate and
// up of one feature, else one column each.
template <typename Cfg, bool HAS_BIAS>
DEV void stage_pass(const float (&acc)[Cfg::ACC], int pass, int first_col, int N,
                    const typename Cfg::Bias* __restrict__ expert_bias, const GateArgs& gate,
                    const float (&row_scale)[2], unsigned char* staging, int warp, int lane) {
  using OutT = typename Cfg::OutT;
  auto bias = [&](int index, bool ok) {
    return HAS_BIAS && ok ? to_float(expert_bias[index]) : 0.0f;
  };
  auto gated = [&](int col, float g, float u) {
    const bool ok = col < N;
    return gated_activation(gate.act, g + bias(col * gate.gate_up_step, ok),
                            u + bias(col * gate.gate_up_step + gate.up_offset, ok));
  };
#pragma unroll
  for (int g = 0; g < Cfg::PASS_COLS / 8; ++g) {
    const int j8 = pass * (Cfg::PASS_COLS / 8) + g;  // 8-column group of the output tile
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      unsigned char* row = staging + (16 * warp + lane / 4 + 8 * half) * STAGING_PITCH;
      if constexpr (Cfg::PAIRS) {
        // Output columns 8 j8 + lane % 4 (+4), from accumulator groups 2 j8 (+1).
#pragma unroll
        for (int p = 0; p < 2; ++p) {
          const int c = 8 * g + 4 * p + lane % 4, a = 4 * (2 * j8 + p) + 2 * half;
          const float v = gated(first_col + 8 * j8 + 4 * p + lane % 4, acc[a], acc[a + 1]);
          stage_one<OutT>(row + c * (int)sizeof(OutT), v);
        }
      } else {
        const int col = first_col + j8 * 8 + 2 * (lane % 4);
        float v[2];
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const float x = acc[4 * j8 + 2 * half + q];
          if constexpr (Cfg::HALVES) {
            v[q] = gated(col + q, x, acc[4 * (j8 + Cfg::WG_N / 16) + 2 * half + q]);
          } else {
            v[q] = finish_linear<Cfg::EPI>(x, bias(col + q, col + q < N), row_scale[half]);
          }
        }
        stage_pair<OutT>(row + (g * 8 + 2 * (lane % 4)) * (int)sizeof(OutT), v[0], v[1]);
      }
    }
  }
}

// The epilogue of a tile: registers -> staging (scaled, biased, converted) -> 16-byte global ops,
// pass by pass. Rows whose permuted_to_expanded is -1 are padding, never written.
template <typename Cfg>
DEV void write_tile(const Args<Cfg>& args, const Unit& unit, const ConsumerThread& me,
                    const float (&acc)[Cfg::ACC], const TileRows<Cfg>& rows,
                    unsigned char* staging) {
  using P = typename Cfg::Pass;
  using OutT = typename Cfg::OutT;
  const int expert = args.tile_expert[unit.m];
  const typename Cfg::Bias* expert_bias = args.bias && unit.k_begin == 0
                                              ? args.bias + (i64)expert * Cfg::W_ROWS_PER_N * args.N
                                              : nullptr;
  OutT* dst_row[P::STEPS];  // of this thread's write-out rows; null for padding rows
#pragma unroll
  for (int i = 0; i < P::STEPS; ++i) {
    const int p = rows.row_base + me.t / P::CHUNKS_PER_ROW + i * P::ROWS_PER_STEP;
    const i64 row = Cfg::SCATTER ? rows.out_expanded[i] / args.top_k : p;
    dst_row[i] = rows.out_expanded[i] >= 0 ? args.out + row * args.N : nullptr;
  }
#pragma unroll
  for (int pass = 0; pass < Cfg::PASSES; ++pass) {
    // The bias-free case (the usual one) gets its own copy, free of per-element bias checks.
    if (expert_bias) {
      stage_pass<Cfg, true>(acc, pass, rows.first_col, args.N, expert_bias, args.gate,
                            rows.row_scale, staging, me.warp, me.lane);
    } else {
      stage_pass<Cfg, false>(acc, pass, rows.first_col, args.N, expert_bias, args.gate,
                             rows.row_scale, staging, me.warp, me.lane);
    }
    consumer_sync(me.c);
    write_out<P, Cfg::SCATTER, OutT>(
        staging, me.t, rows.first_col + pass * Cfg::PASS_COLS, args.N,
        [&](int i, int) { return dst_row[i] != nullptr; }, [&](int i, int) { return dst_row[i]; });
    consumer_sync(me.c);
  }
}

// Consumer warpgroup c computes its part of each tile: rows a_row(c) of A against B's slice(c).
template <typename Cfg>
DEV void consume_tiles(const Args<Cfg>& args, const Schedule& sched, unsigned char* smem,
                       StageRing<Cfg::STAGES> ring, int role) {
  using T = typename Cfg::Tiles;
  regs_alloc<CONSUMER_REGS>();
  const ConsumerThread me = consumer_thread(role);
  unsigned char* staging = smem + Cfg::STAGING_OFFSET + me.c * WGMMA_M * STAGING_PITCH;
  float acc[1][Cfg::ACC];
  for_each_unit(sched, [&](const Unit& unit) {
    TileRows<Cfg> rows(args, unit, me);
    consume<Cfg::WG_N, typename Cfg::Elem, Cfg::GATHER_A, false, Cfg::B_MN>(
        ring, acc, unit.k_begin, unit.k_end, me.lane,
        [&](u32 stage) {
          constexpr int ROW_BYTES = Cfg::BK * Cfg::ELEM_BYTES;
          return Operands{T::a(smem, stage) + Cfg::a_row(me.c) * ROW_BYTES,
                          T::b(smem, stage) + Cfg::b_row(me.c) * ROW_BYTES};
        },
        [&](int kb) {
          if (Cfg::SCATTER && kb == unit.k_begin) rows.load_scales(args.topk_weights);
        });
    write_tile(args, unit, me, acc[0], rows, staging);
  });
}

// A row-major kernel's body: the stage ring and the schedule, then the producer warpgroup
// (produce(args, sched, smem, ring)) and the consumers (consume(..., role)). The 16-bit and the
// fp8 kernels differ in those two only.
template <typename Cfg, typename A, typename Produce, typename Consume>
DEV void run_kernel(const A& args, Produce&& produce, Consume&& consume) {
  unsigned char* smem = dynamic_smem();
  StageRing<Cfg::STAGES> ring(smem + Cfg::BARRIER_OFFSET);
  if (threadIdx.x == 0) ring.init(Cfg::GATHER_A ? 1 + WARPGROUP_THREADS : 1);  // + the gatherers
  __syncthreads();
  const Schedule sched = schedule(args);
  run_roles<Cfg::GATHER_A>(
      args.zero, args.zero_bytes, [&] { produce(args, sched, smem, ring); },
      [&](int role) { consume(args, sched, smem, ring, role); });
}

// The kernel.
template <typename Cfg>
DEV void grouped_gemm(const Args<Cfg>& args) {
  run_kernel<Cfg>(
      args, [](auto&&... a) { produce_tiles(a...); }, [](auto&&... a) { consume_tiles(a...); });
}

}  // namespace rows
}  // namespace sm90

// Entry points: one per (dtype, BM, BN, epilogue, B's major order), instantiated by the
// grouped_gemm_*.cu modules, each with its contract (common/spec.cuh) from its rows::Config,
// sm90::entry::NAME. Launch: a persistent grid of at most one CTA per SM. GEMM1 takes x (gathered
// rows), GEMM2 the TMA descriptor of h. W_TAG: k (weights [.., N, K]) or mn ([.., K, N]).
// GATE: gated (GEMM1 also takes its activation and bias layout, GateArgs) or plain.
#define MOEFUSE_SM90_ENTRY(NAME, OP, TAG, ELEM, BM, BN, STAGES, EPI, OUT_TAG, OUT, W_TAG, B_MN, \
                           A_PARAM, A_DESC, X, GATE)                                            \
  namespace sm90::entry {                                                                       \
  using NAME = sm90::rows::Config<ELEM, BM, BN, STAGES, sm90::Epilogue::EPI, OUT, B_MN>;        \
  }                                                                                             \
  MOEFUSE_SM90_KERNEL(NAME, "family=rows op=" #OP " elem=" #TAG " out=" #OUT_TAG " w=" #W_TAG,  \
                      (A_PARAM, const __grid_constant__ TmaDesc b_desc, const ELEM* bias,       \
                       const int* tile_expert, MOEFUSE_SM90_PLAN_PARAMS(OUT), int k_splits,     \
                       Vec16* zero, i64 zero_bytes MOEFUSE_GATE_PARAMS_##GATE),                 \
                      MOEFUSE_SM90_ROWS_INTS(sm90::entry::NAME)) {                              \
    sm90::rows::grouped_gemm(                                                                   \
        sm90::rows::Args<sm90::entry::NAME>{MOEFUSE_SM90_PLAN_ARGS, A_DESC, X, &b_desc,         \
                                            tile_expert, k_splits, MOEFUSE_GATE_ARGS_##GATE});  \
  }
#define MOEFUSE_SM90_GEMM1(NAME, OP, TAG, ELEM, BM, BN, STAGES, EPI, W_TAG, B_MN, GATE) \
  MOEFUSE_SM90_ENTRY(NAME, OP, TAG, ELEM, BM, BN, STAGES, EPI, TAG, ELEM, W_TAG, B_MN,  \
                     const ELEM* x, nullptr, x, GATE)
#define MOEFUSE_SM90_GEMM2(NAME, OP, TAG, ELEM, BM, BN, STAGES, EPI, OUT_TAG, OUT, W_TAG, B_MN) \
  MOEFUSE_SM90_ENTRY(NAME, OP, TAG, ELEM, BM, BN, STAGES, EPI, OUT_TAG, OUT, W_TAG, B_MN,       \
                     const __grid_constant__ TmaDesc a_desc, &a_desc, (const ELEM*)nullptr, plain)

// The gated GEMM1s (gate and up halves of a tile; adjacent columns), the not-gated one, and the
// three GEMM2s of one tile shape.
#define MOEFUSE_SM90_GEMM1_GATED(TAG, ELEM, BM, BN, STAGES, W_TAG, B_MN)                        \
  MOEFUSE_SM90_GEMM1(sm90_gemm1_gated_##TAG##_m##BM##_n##BN##_w##W_TAG, gemm1_gated, TAG, ELEM, \
                     BM, BN, STAGES, Gated, W_TAG, B_MN, gated)
#define MOEFUSE_SM90_GEMM1_PAIRS(TAG, ELEM, BM, BN, STAGES, W_TAG, B_MN)                         \
  MOEFUSE_SM90_GEMM1(sm90_gemm1_gated_pairs_##TAG##_m##BM##_n##BN##_w##W_TAG, gemm1_gated_pairs, \
                     TAG, ELEM, BM, BN, STAGES, GatedPairs, W_TAG, B_MN, gated)
#define MOEFUSE_SM90_GEMM1_RELU2(TAG, ELEM, BM, BN, STAGES, W_TAG, B_MN)                        \
  MOEFUSE_SM90_GEMM1(sm90_gemm1_relu2_##TAG##_m##BM##_n##BN##_w##W_TAG, gemm1_relu2, TAG, ELEM, \
                     BM, BN, STAGES, Relu2, W_TAG, B_MN, plain)
#define MOEFUSE_SM90_GEMM2S(TAG, ELEM, BM, BN, STAGES, W_TAG, B_MN)                                \
  MOEFUSE_SM90_GEMM2(sm90_gemm2_store_##TAG##_m##BM##_n##BN##_w##W_TAG, gemm2_store, TAG, ELEM,    \
                     BM, BN, STAGES, Store, TAG, ELEM, W_TAG, B_MN)                                \
  MOEFUSE_SM90_GEMM2(sm90_gemm2_scatter_##TAG##_m##BM##_n##BN##_w##W_TAG##_out_##TAG,              \
                     gemm2_scatter, TAG, ELEM, BM, BN, STAGES, ScatterAdd, TAG, ELEM, W_TAG, B_MN) \
  MOEFUSE_SM90_GEMM2(sm90_gemm2_scatter_##TAG##_m##BM##_n##BN##_w##W_TAG##_out_f32, gemm2_scatter, \
                     TAG, ELEM, BM, BN, STAGES, ScatterAdd, f32, float, W_TAG, B_MN)

// The tile shapes (BM, BN, STAGES as deep as shared memory allows), each given to X(TAG, ELEM, BM,
// BN, STAGES, W_TAG, B_MN). BM = 64 (decode and small batches) has BN >= 128: each warpgroup's
// MMAs are at least 64 wide. MN-major gated halves need whole 64-column boxes per half slice.
#define MOEFUSE_SM90_M128_SHAPES(X, TAG, ELEM, W_TAG, B_MN) \
  X(TAG, ELEM, 128, 64, 8, W_TAG, B_MN)                     \
  X(TAG, ELEM, 128, 128, 6, W_TAG, B_MN) X(TAG, ELEM, 128, 256, 4, W_TAG, B_MN)
#define MOEFUSE_SM90_M64_SHAPES(X, TAG, ELEM, W_TAG, B_MN) \
  X(TAG, ELEM, 64, 128, 8, W_TAG, B_MN) X(TAG, ELEM, 64, 256, 5, W_TAG, B_MN)
#define MOEFUSE_SM90_SHAPES(X, TAG, ELEM, W_TAG, B_MN) \
  MOEFUSE_SM90_M128_SHAPES(X, TAG, ELEM, W_TAG, B_MN)  \
  MOEFUSE_SM90_M64_SHAPES(X, TAG, ELEM, W_TAG, B_MN)
#define MOEFUSE_SM90_MN_HALVES_SHAPES(X, TAG, ELEM) \
  X(TAG, ELEM, 128, 128, 6, mn, true)               \
  X(TAG, ELEM, 128, 256, 4, mn, true) X(TAG, ELEM, 64, 256, 5, mn, true)

// The kernels every model's K-major weights use.
#define MOEFUSE_SM90_ENTRIES(TAG, ELEM, BM, BN, STAGES, W_TAG, B_MN) \
  MOEFUSE_SM90_GEMM1_GATED(TAG, ELEM, BM, BN, STAGES, W_TAG, B_MN)   \
  MOEFUSE_SM90_GEMM2S(TAG, ELEM, BM, BN, STAGES, W_TAG, B_MN)
