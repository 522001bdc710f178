// The Hopper grouped GEMMs of K-major weights with 128-row tiles, bf16. One module per
// element type: a call compiles only its own (docs/DESIGN.md D28).
#include "grouped_gemm.cuh"

MOEFUSE_SM90_M128_SHAPES(MOEFUSE_SM90_ENTRIES, bf16, Bf16, k, false)
