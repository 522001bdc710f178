// The Hopper GEMM2s of weights stored [K, N] (transformers' is_transposed), read in place, f16.
#include "grouped_gemm.cuh"

MOEFUSE_SM90_SHAPES(MOEFUSE_SM90_GEMM2S, f16, F16, mn, true)
