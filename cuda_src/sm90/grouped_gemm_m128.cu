// The Hopper grouped GEMMs of K-major weights with 128-row tiles.
#include "grouped_gemm.cuh"

MOEFUSE_SM90_M128_SHAPES(MOEFUSE_SM90_ENTRIES, bf16, Bf16, k, false)
MOEFUSE_SM90_M128_SHAPES(MOEFUSE_SM90_ENTRIES, f16, F16, k, false)
