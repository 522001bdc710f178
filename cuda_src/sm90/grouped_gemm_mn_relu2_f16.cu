// The Hopper not-gated GEMM1s (relu2) of weights stored [K, N], read in place, f16. A module of
// its own (docs/DESIGN.md D28).
#include "grouped_gemm.cuh"

MOEFUSE_SM90_SHAPES(MOEFUSE_SM90_GEMM1_RELU2, f16, F16, mn, true)
