// The pipeline both sm90 kernel families run: STAGES stage buffers of A and B tiles, handed from
// the producer warpgroup to the consumers and back by a ring of mbarriers; the producer walks its
// units and their K blocks, loading one stage each; the consumers wait for each stage, run its
// wgmmas and free it. A family supplies the unit order, the loads and the MMA operands.
#pragma once
#include "config.cuh"

namespace sm90 {

// The block's dynamic shared memory. 1024-byte alignment: the 128-byte swizzle repeats every 1024
// bytes (TMA and wgmma agree on the pattern only from such a base).
DEV unsigned char* dynamic_smem() {
  extern __shared__ __align__(1024) unsigned char smem[];
  return smem;
}

// The A and B tiles of each stage, at the front of shared memory (dynamic_smem).
template <int A_BYTES, int B_BYTES, int STAGES>
struct StageTiles {
  static constexpr int A_STAGE_BYTES = A_BYTES;
  static constexpr int B_STAGE_BYTES = B_BYTES;
  static constexpr int A_OFFSET = 0;
  static constexpr int B_OFFSET = STAGES * A_STAGE_BYTES;
  static constexpr int END = B_OFFSET + STAGES * B_STAGE_BYTES;
  static_assert(A_BYTES % 1024 == 0 && B_BYTES % 1024 == 0, "whole swizzle atoms");
  DEV static unsigned char* a(unsigned char* smem, u32 stage) {
    return smem + A_OFFSET + stage * A_STAGE_BYTES;
  }
  DEV static unsigned char* b(unsigned char* smem, u32 stage) {
    return smem + B_OFFSET + stage * B_STAGE_BYTES;
  }
};

// StageTiles (TILES) plus, per stage, a slot of SLOT_BYTES after all the B tiles: an fp8 kernel's
// A-row scales, loaded with the stage's tiles and read by the consumers before they free it.
template <typename TILES, int SLOT_BYTES_, int STAGES>
struct ScaledStageTiles : TILES {
  static constexpr int SLOT_BYTES = SLOT_BYTES_;
  static constexpr int SLOT_OFFSET = TILES::END;
  static constexpr int END = SLOT_OFFSET + STAGES * SLOT_BYTES;
  static_assert(SLOT_BYTES % 128 == 0, "TMA-aligned slots");
  DEV static float* scales(unsigned char* smem, u32 stage) {
    return reinterpret_cast<float*>(smem + SLOT_OFFSET + stage * SLOT_BYTES);
  }
};

// The ring of STAGES stages between the producer and the consumers: inputs_ready[s] completes once
// stage s's loads have landed (the producer's arrive_expect_tx and the TMA bytes, plus the arrivals
// of any cp.async-gathering threads), stage_free[s] once every consumer warp has released it. Each
// role walks its own copy (the stage and phase it is at).
template <int STAGES>
struct StageRing {
  static constexpr int BYTES = 2 * STAGES * (int)sizeof(u64);
  u64* inputs_ready;  // [STAGES], then stage_free [STAGES]
  RingState<STAGES> at;

  DEV explicit StageRing(unsigned char* barriers)
      : inputs_ready(reinterpret_cast<u64*>(barriers)) {}
  DEV u64* stage_free() const { return inputs_ready + STAGES; }
  DEV u32 stage() const { return at.stage; }
  DEV u64* ready_bar() const { return &inputs_ready[at.stage]; }
  DEV void advance() { at.advance(); }

  // One thread, before a CTA-wide barrier. `ready_arrivals`: arrivals completing a stage's inputs.
  DEV void init(u32 ready_arrivals) const {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(&inputs_ready[s], ready_arrivals);
      mbar_init(&stage_free()[s], CONSUMER_WARPS);
    }
    mbar_init_fence();
  }
  // Producer: wait until the consumers have freed the current stage (on the first lap, the phase
  // before a fresh barrier's first counts as complete).
  DEV void wait_free() const { mbar_wait(&stage_free()[at.stage], at.phase ^ 1); }
  // Producer, one thread: arrive on the stage's inputs, expecting `bytes` of TMA; returns the
  // barrier the loads complete on.
  DEV u64* expect_bytes(u32 bytes) const {
    u64* bar = ready_bar();
    mbar_arrive_expect_tx(bar, bytes);
    return bar;
  }
  // Consumer: wait for the current stage's inputs; release it (one arrival per warp).
  DEV void wait_ready() const { mbar_wait(ready_bar(), at.phase); }
  DEV void release(int lane) const {
    if (lane == 0) mbar_arrive(&stage_free()[at.stage]);
  }
};

// The arguments both kernel families take besides their operands: the routing plan, the bias, the
// output and the sizes, and the buffer GEMM1 of the fused path clears (zero_bytes: a multiple of
// 16).
template <typename Elem, typename OutT>
struct PlanArgs {
  const Elem* bias;
  const int* expert_offsets;
  int num_local_experts;
  const int* permuted_to_expanded;
  const float* topk_weights;
  OutT* out;
  int K, N, top_k;
  Vec16* zero;
  i64 zero_bytes;
};
// The entry points' run of parameters from expert_offsets to top_k, and their PlanArgs.
// clang-format off
#define MOEFUSE_SM90_PLAN_PARAMS(OUT)                                                    \
  const int* expert_offsets, int num_local_experts, const int* permuted_to_expanded,     \
  const float* topk_weights, OUT* out, int K, int N, int top_k
#define MOEFUSE_SM90_PLAN_ARGS                                                           \
  {bias, expert_offsets, num_local_experts, permuted_to_expanded, topk_weights, out, K, N, \
   top_k, zero, zero_bytes}
// clang-format on

// Units blockIdx.x, blockIdx.x + gridDim.x, ... of `sched` (a persistent CTA's share).
template <typename Sched, typename F>
DEV void for_each_unit(const Sched& sched, F&& f) {
  for (int u = blockIdx.x; u < sched.count(); u += gridDim.x) f(sched.unit(u));
}

// The producer: each unit's K blocks [k_begin, k_end), one stage each. begin(unit) sets up a
// unit's loads and returns load(kb), which fills the current stage once it is free.
template <int STAGES, typename Sched, typename Begin>
DEV void produce(StageRing<STAGES>& ring, const Sched& sched, Begin&& begin) {
  for_each_unit(sched, [&](const auto& unit) {
    const auto load = begin(unit);
    for (int kb = unit.k_begin; kb < unit.k_end; ++kb, ring.advance()) {
      ring.wait_free();
      load(kb);
    }
  });
}

// GEMM1 of the fused path clears GEMM2's output (`bytes`: a multiple of 16) with the producer
// warpgroup's threads.
DEV void clear_output(Vec16* __restrict__ zero, i64 bytes) {
  const i64 count = (i64)((u64)bytes / sizeof(Vec16));
  const Vec16 zeros = {{0u, 0u, 0u, 0u}};
  for (i64 v = (i64)blockIdx.x * WARPGROUP_THREADS + threadIdx.x; v < count;
       v += (i64)gridDim.x * WARPGROUP_THREADS)
    zero[v] = zeros;
}

// COLS columns of expert `expert`'s weights stored [K, N] (MN-major), from `first` on, K block kb:
// 64-column boxes placed one after another (the layout Major<true> reads). HALF >= 0: the gate (0)
// or up (1) half of gated weights, through a 4-D map; else a 3-D map.
template <int COLS, typename Elem>
DEV void load_mn_boxes(unsigned char* dst, const TmaDesc* desc, u64* bar, int kb, int first,
                       int half, int expert) {
  constexpr int BK = Operand<Elem>::BK;
  static_assert(BK == MN_BLOCK && COLS % MN_BLOCK == 0, "an MN-major box is 64 columns x BK rows");
#pragma unroll
  for (int b = 0; b < COLS / MN_BLOCK; ++b) {
    unsigned char* box = dst + b * MN_BLOCK_BYTES;
    const int n = first + b * MN_BLOCK;
    if (half >= 0) {
      tma_load_4d(box, desc, bar, n, kb * BK, half, expert);
    } else {
      tma_load_3d(box, desc, bar, n, kb * BK, expert);
    }
  }
}

// The roles, once the kernel's shared state is set up: warpgroup 0 produces, then clears GEMM2's
// output (GEMM1 of the fused path) once its loads are issued; the others consume, given their
// warpgroup. GATHERS: the producer also copied by cp.async, whose copies it waits for last.
template <bool GATHERS, typename Produce, typename Consume>
DEV void run_roles(Vec16* zero, i64 zero_bytes, Produce&& produce, Consume&& consume) {
  const int role = warpgroup();  // 0: the producer
  if (role == 0) {
    produce();
    clear_output(zero, zero_bytes);
    if (GATHERS) cp_async_wait<0>();
  } else {
    consume(role);
  }
}

// Where a consumer warpgroup's operands start in a stage: A (SUBTILES blocks of WGMMA_M rows of one
// K block each, a 64 x 64 box when MN-major) and B.
struct Operands {
  const unsigned char* a;
  const unsigned char* b;
};

// The consumers' main loop over one unit's K blocks [k_begin, k_end): wait for the stage's inputs,
// issue its MMA_STEPS steps of m64nNk16 MMAs, each on SUBTILES blocks of A (operands(stage)),
// commit, run after_issue(kb) while they execute, wait for them and free the stage. 16-bit
// operands: fp8 ones are promoted into fp32 per K block instead of accumulating across blocks.
// A_GENERIC: A was written through the generic proxy (cp.async), which the async proxy must see.
// A_MN, B_MN: the operand is MN-major (weights stored [K, N]).
template <int N, typename Elem, bool A_GENERIC, bool A_MN, bool B_MN, int STAGES, int SUBTILES,
          int ACC, typename OperandsFn, typename AfterIssue>
DEV void consume(StageRing<STAGES>& ring, float (&acc)[SUBTILES][ACC], int k_begin, int k_end,
                 int lane, OperandsFn&& operands, AfterIssue&& after_issue) {
  using Op = Operand<Elem>;
  static_assert(Op::MMA_K == 16, "m64nNk16 MMAs: 16-bit operands");
  static_assert(N / 2 <= ACC, "an m64nNk16 accumulates N / 2 registers per thread");
  for (int kb = k_begin; kb < k_end; ++kb, ring.advance()) {
    ring.wait_ready();
    if (A_GENERIC) fence_proxy_async_smem();  // cp.async wrote A through the generic proxy
    const Operands at = operands(ring.stage());
    using A = Major<A_MN>;
    using B = Major<B_MN>;
    u64 a[SUBTILES];
#pragma unroll
    for (int sub = 0; sub < SUBTILES; ++sub)
      a[sub] = A::desc(at.a + sub * WGMMA_M * Op::BK * Op::BYTES);
    const u64 b = B::desc(at.b);
    wgmma_fence();
#pragma unroll
    for (int step = 0; step < Op::MMA_STEPS; ++step) {
#pragma unroll
      for (int sub = 0; sub < SUBTILES; ++sub)
        wgmma_m64nNk16<N, A::TRANS, B::TRANS>(acc[sub], A::advance_kstep(a[sub], step),
                                              B::advance_kstep(b, step), kb > k_begin || step > 0,
                                              (Elem*)nullptr);
    }
    wgmma_commit();
    after_issue(kb);
    wgmma_wait<0>();  // keeping a batch in flight (wait<1>, the stage freed a batch later)
                      // measured no faster (docs/DESIGN.md D10)
    ring.release(lane);
  }
}

// The promotion factors of one K block: (A-row scale x weight scale) for each of the block's GROUPS
// K groups, of a consumer thread's two fragment rows (accumulator register i: row (i >> 1) & 1)
// and two column halves (registers below and from ACC / 2: a gated tile's gate and up slices).
template <int GROUPS>
struct Promotion {
  float f[GROUPS][2][2];
};

// The fp8 main loop (e4m3 operands, both K-major): consume's stage handshake, but each K block's
// MMA steps run in GROUPS groups, each into the fresh accumulators `acc` (the tensor cores' fp8
// sums lose precision as K grows: PTX_CRIB section 12), waited for and promoted into the f32
// registers `final` += factor * acc, the factor being the group's A-row scale times its weight
// scale. promotion(stage, kb) reads them (the A-row scales from the stage's shared memory) while
// the first group's MMAs run, before the stage is freed. `final` is zeroed first.
template <int N, int GROUPS, bool A_GENERIC, int STAGES, int ACC, typename OperandsFn,
          typename PromotionFn, typename AfterIssue>
DEV void consume_promoted(StageRing<STAGES>& ring, float (&acc)[ACC], float (&final)[ACC],
                          int k_begin, int k_end, int lane, OperandsFn&& operands,
                          PromotionFn&& promotion, AfterIssue&& after_issue) {
  using Op = Operand<E4m3>;
  constexpr int STEPS = Op::MMA_STEPS / GROUPS;  // MMA steps per promoted group
  static_assert(N / 2 == ACC && Op::MMA_STEPS % GROUPS == 0, "whole groups of m64nNk32 MMAs");
#pragma unroll
  for (int i = 0; i < ACC; ++i) final[i] = 0.0f;
  for (int kb = k_begin; kb < k_end; ++kb, ring.advance()) {
    ring.wait_ready();
    if (A_GENERIC) fence_proxy_async_smem();  // cp.async wrote A through the generic proxy
    const Operands at = operands(ring.stage());
    const u64 a = smem_desc_sw128(at.a), b = smem_desc_sw128(at.b);
    Promotion<GROUPS> p;
#pragma unroll
    for (int g = 0; g < GROUPS; ++g) {
      wgmma_fence();
#pragma unroll
      for (int step = 0; step < STEPS; ++step)
        wgmma_m64nNk32<N>(acc, smem_desc_advance_kstep(a, g * STEPS + step),
                          smem_desc_advance_kstep(b, g * STEPS + step), step > 0, (E4m3*)nullptr);
      wgmma_commit();
      if (g == 0) {
        after_issue(kb);
        p = promotion(ring.stage(), kb);
      }
      wgmma_wait<0>();
      wgmma_fence_operands(acc);
      if (g == GROUPS - 1) ring.release(lane);
#pragma unroll
      for (int i = 0; i < ACC; ++i)
        final[i] = fmaf(p.f[g][(i >> 1) & 1][i / (ACC / 2)], acc[i], final[i]);
    }
  }
}

}  // namespace sm90
