// The Hopper grouped GEMMs of K-major weights with 64-row tiles (decode and small batches).
#include "grouped_gemm.cuh"

MOEFUSE_SM90_M64_SHAPES(MOEFUSE_SM90_ENTRIES, bf16, Bf16, k, false)
MOEFUSE_SM90_M64_SHAPES(MOEFUSE_SM90_ENTRIES, f16, F16, k, false)
