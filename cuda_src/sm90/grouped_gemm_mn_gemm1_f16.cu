// The Hopper GEMM1s of weights stored [K, N] (transformers' is_transposed), read in place, f16.
// Modules of their own: only a model with that layout compiles them (GEMM1 and GEMM2 in parallel).
#include "grouped_gemm.cuh"

MOEFUSE_SM90_MN_GEMM1S(f16, F16)
