// The Hopper gated GEMM1s of weights stored [K, N] (transformers' is_transposed) with gate and up
// concatenated (halves), read in place, f16. Each GEMM1 of that layout is a module of its own:
// a model compiles only the one its gate/up order and activation use (docs/DESIGN.md D28).
#include "grouped_gemm.cuh"

MOEFUSE_SM90_MN_HALVES_SHAPES(MOEFUSE_SM90_GEMM1_GATED, f16, F16)
