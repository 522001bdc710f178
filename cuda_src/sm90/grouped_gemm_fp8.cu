// The Hopper grouped GEMMs of fp8 e4m3 K-major weights with f32 block (or per-tensor) scales,
// row-major tiles (grouped_gemm_fp8.cuh; docs/DESIGN.md D30): the fp8 layer's GEMMs.
#include "grouped_gemm_fp8.cuh"

// An fp8 entry point: the 16-bit one's parameters with the A operand's and the weights' scales.
// GEMM1 (A_KIND gather): x_q's rows gathered, x_s strided; it writes h_q (out) and h_s. GEMM2
// (A_KIND tma): h_q and h_s through their TMA maps.
// clang-format off
#define MOEFUSE_SM90_FP8_A_PARAMS_gather                                                  \
  const E4m3* x, const float* x_scale, int x_scale_row, int x_scale_k
#define MOEFUSE_SM90_FP8_A_PARAMS_tma                                                     \
  const __grid_constant__ TmaDesc a_desc, const __grid_constant__ TmaDesc a_scale_desc
#define MOEFUSE_SM90_FP8_A_ARGS_gather nullptr, x
#define MOEFUSE_SM90_FP8_A_ARGS_tma &a_desc, (const E4m3*)nullptr
#define MOEFUSE_SM90_FP8_SCALE_ARGS_gather x_scale, x_scale_row, x_scale_k, nullptr
#define MOEFUSE_SM90_FP8_SCALE_ARGS_tma nullptr, 0, 0, &a_scale_desc
#define MOEFUSE_SM90_FP8_H_PARAMS_gather , float* h_scale, int h_scale_rows
#define MOEFUSE_SM90_FP8_H_PARAMS_tma
#define MOEFUSE_SM90_FP8_H_ARGS_gather h_scale, h_scale_rows
#define MOEFUSE_SM90_FP8_H_ARGS_tma nullptr, 0
// clang-format on
#define MOEFUSE_SM90_FP8_ENTRY(NAME, OP, BM, BN, STAGES, EPI, OUT_TAG, OUT, A_KIND, GATE)          \
  namespace sm90::entry {                                                                          \
  using NAME = sm90::rows::Fp8Config<BM, BN, STAGES, sm90::Epilogue::EPI, OUT>;                    \
  }                                                                                                \
  MOEFUSE_SM90_KERNEL(                                                                             \
      NAME, "family=rows op=" #OP " elem=e4m3 out=" #OUT_TAG " w=k",                               \
      (MOEFUSE_SM90_FP8_A_PARAMS_##A_KIND, const __grid_constant__ TmaDesc b_desc,                 \
       const float* w_scale, int w_scale_rows, int w_scale_k, int w_scale_expert,                  \
       const float* bias, const int* tile_expert, MOEFUSE_SM90_PLAN_PARAMS(OUT), int k_splits,     \
       Vec16* zero, i64 zero_bytes MOEFUSE_SM90_FP8_H_PARAMS_##A_KIND MOEFUSE_GATE_PARAMS_##GATE), \
      MOEFUSE_SM90_FP8_INTS(sm90::entry::NAME)) {                                                  \
    sm90::rows::grouped_gemm_fp8(sm90::rows::Fp8Args<sm90::entry::NAME>{                           \
        {MOEFUSE_SM90_PLAN_ARGS, MOEFUSE_SM90_FP8_A_ARGS_##A_KIND, &b_desc, tile_expert, k_splits, \
         MOEFUSE_GATE_ARGS_##GATE},                                                                \
        MOEFUSE_SM90_FP8_SCALE_ARGS_##A_KIND,                                                      \
        w_scale,                                                                                   \
        w_scale_rows,                                                                              \
        w_scale_k,                                                                                 \
        w_scale_expert,                                                                            \
        MOEFUSE_SM90_FP8_H_ARGS_##A_KIND});                                                        \
  }

// GEMM1: gated halves, h quantised per 64 features. GEMM2: the store (y in bf16 or f16) and the
// scatter (into bf16, f16 or f32 out) of one tile shape.
#define MOEFUSE_SM90_FP8_GEMM1(BM, BN, STAGES)                                                  \
  MOEFUSE_SM90_FP8_ENTRY(sm90_gemm1_gated_e4m3_m##BM##_n##BN##_wk, gemm1_gated, BM, BN, STAGES, \
                         Gated, e4m3, E4m3, gather, gated)
#define MOEFUSE_SM90_FP8_GEMM2_OUT(BM, BN, STAGES, OUT_TAG, OUT)                                  \
  MOEFUSE_SM90_FP8_ENTRY(sm90_gemm2_store_e4m3_m##BM##_n##BN##_wk_out_##OUT_TAG, gemm2_store, BM, \
                         BN, STAGES, Store, OUT_TAG, OUT, tma, plain)                             \
  MOEFUSE_SM90_FP8_ENTRY(sm90_gemm2_scatter_e4m3_m##BM##_n##BN##_wk_out_##OUT_TAG, gemm2_scatter, \
                         BM, BN, STAGES, ScatterAdd, OUT_TAG, OUT, tma, plain)
#define MOEFUSE_SM90_FP8_GEMM2(BM, BN, STAGES)                                                  \
  MOEFUSE_SM90_FP8_GEMM2_OUT(BM, BN, STAGES, bf16, Bf16)                                        \
  MOEFUSE_SM90_FP8_GEMM2_OUT(BM, BN, STAGES, f16, F16)                                          \
  MOEFUSE_SM90_FP8_ENTRY(sm90_gemm2_scatter_e4m3_m##BM##_n##BN##_wk_out_f32, gemm2_scatter, BM, \
                         BN, STAGES, ScatterAdd, f32, float, tma, plain)

// Shapes (docs/DESIGN.md D30; stages as deep as shared memory allows, as the 16-bit ones).
// No m128n256 (accumulators plus promoted values would not fit), no GEMM1 m64n128 (a
// warpgroup's 32 features would split an h scale group).
MOEFUSE_SM90_FP8_GEMM1(128, 128, 6)
MOEFUSE_SM90_FP8_GEMM1(64, 256, 5)
MOEFUSE_SM90_FP8_GEMM2(128, 64, 8)
MOEFUSE_SM90_FP8_GEMM2(128, 128, 6)
MOEFUSE_SM90_FP8_GEMM2(64, 128, 8)
MOEFUSE_SM90_FP8_GEMM2(64, 256, 5)
