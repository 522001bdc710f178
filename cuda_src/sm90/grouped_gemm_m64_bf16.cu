// The Hopper grouped GEMMs of K-major weights with 64-row tiles (decode and small batches), bf16.
// One module per element type: a call compiles only its own (docs/DESIGN.md D28).
#include "grouped_gemm.cuh"

MOEFUSE_SM90_M64_SHAPES(MOEFUSE_SM90_ENTRIES, bf16, Bf16, k, false)
