// The shape every Hopper (sm_90a) kernel of this folder shares: one producer warpgroup (TMA,
// cp.async) and CONSUMER_WARPGROUPS consumer warpgroups (wgmma, epilogue) per CTA, the register
// split between the roles, and the named barriers. A pipeline stage's K block depends on the
// operand type (wgmma.cuh's Operand: one 128-byte swizzled row), so each Config carries it.
// grouped_gemm.cuh (row-major tiles) and swapped.cuh (swapped operands) build on it.
#pragma once
#include "../common/activation.cuh"
#include "../common/async.cuh"
#include "../common/spec.cuh"
#include "wgmma.cuh"

namespace sm90 {

constexpr int WARP_THREADS = 32;
constexpr int WARPGROUP_THREADS = 128;  // the 4 warps that issue one wgmma together
constexpr int WARPGROUP_WARPS = WARPGROUP_THREADS / WARP_THREADS;
constexpr int CONSUMER_WARPGROUPS = 2;  // warpgroups 1 and 2; warpgroup 0 is the producer
constexpr int CONSUMER_WARPS = CONSUMER_WARPGROUPS * WARPGROUP_WARPS;  // arrivals freeing a stage
constexpr int THREADS = (1 + CONSUMER_WARPGROUPS) * WARPGROUP_THREADS;
constexpr int MIN_BLOCKS = 1;  // a persistent grid of at most one CTA per SM

constexpr int WGMMA_M = 64;                    // rows of A (and of the accumulator) per wgmma
constexpr int VEC_BYTES = (int)sizeof(Vec16);  // the epilogue's global stores and reductions
constexpr int GROUP_N = 8;                     // n tiles walked together (L2 reuse of A and B)

constexpr int SMEM_PER_BLOCK = 232448;  // 227 KiB: the most shared memory a block may opt in to
constexpr int REGISTERS_PER_SM = 65536;
constexpr int PRODUCER_REGS = 40;
constexpr int CONSUMER_REGS = 232;
// setmaxnreg moves registers between the warpgroups inside the launch's allocation: THREADS
// threads of (REGISTERS_PER_SM / THREADS rounded down to 8) registers each.
template <int PRODUCER, int CONSUMER>
constexpr bool REGS_FIT = WARPGROUP_THREADS * (PRODUCER + CONSUMER_WARPGROUPS * CONSUMER) <=
                          REGISTERS_PER_SM / THREADS / 8 * 8 * THREADS;
static_assert(REGS_FIT<PRODUCER_REGS, CONSUMER_REGS>, "setmaxnreg within the launch's registers");

// Named barrier ids: 0 is __syncthreads'; consumer warpgroup c syncs its epilogue on
// EPILOGUE_BARRIER + c.
constexpr u32 EPILOGUE_BARRIER = 1;

// GEMM1: Gated (a tile's gate columns, then the matching up columns), GatedPairs (gate and up in
// adjacent columns: weights stored [K, 2I] interleaved), Relu2 (not gated); GEMM2: Store (rows
// for the finalize) or ScatterAdd (router-weighted rows added into the tokens' outputs).
enum class Epilogue { Gated, GatedPairs, Relu2, Store, ScatterAdd };
DEV constexpr bool is_gated(Epilogue e) {
  return e == Epilogue::Gated || e == Epilogue::GatedPairs;
}
DEV constexpr bool is_gemm1(Epilogue e) { return is_gated(e) || e == Epilogue::Relu2; }

// An sm90 entry point: MOEFUSE_KERNEL (common/spec.cuh) with the launch shape every kernel here
// shares. PARAMS is macro-expanded before MOEFUSE_KERNEL publishes it, so it may use
// MOEFUSE_SM90_PLAN_PARAMS (pipeline.cuh).
#define MOEFUSE_SM90_KERNEL(NAME, TAGS, PARAMS, ...) \
  MOEFUSE_KERNEL(NAME, sm90::THREADS, sm90::MIN_BLOCKS, TAGS, PARAMS, __VA_ARGS__)

DEV int warpgroup() { return threadIdx.x / WARPGROUP_THREADS; }

// A consumer thread's place: warpgroup c among the consumers, thread t, warp and lane in it.
struct ConsumerThread {
  int c, t, warp, lane;
};
DEV ConsumerThread consumer_thread(int warpgroup) {
  const int t = threadIdx.x % WARPGROUP_THREADS;
  return ConsumerThread{warpgroup - 1, t, t / WARP_THREADS, t % WARP_THREADS};
}
// Synchronises consumer warpgroup c alone (its epilogue's staging).
DEV void consumer_sync(int c) { named_barrier_sync(EPILOGUE_BARRIER + c, WARPGROUP_THREADS); }

}  // namespace sm90
