// The Hopper gated GEMM1s of weights stored [K, N] with gate and up interleaved (gpt-oss), read in
// place, f16: gate and up paired in the accumulators. A module of its own (docs/DESIGN.md D28).
#include "grouped_gemm.cuh"

MOEFUSE_SM90_SHAPES(MOEFUSE_SM90_GEMM1_PAIRS, f16, F16, mn, true)
