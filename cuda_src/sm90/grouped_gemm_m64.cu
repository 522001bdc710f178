// The Hopper grouped GEMMs with 64-row tiles (decode and small batches): (BN, STAGES) as deep as
// shared memory allows. BN >= 128: each warpgroup's MMAs are at least 64 wide.
#include "grouped_gemm.cuh"

MOEFUSE_SM90_ENTRIES(bf16, Bf16, 64, 128, 8)
MOEFUSE_SM90_ENTRIES(bf16, Bf16, 64, 256, 5)
MOEFUSE_SM90_ENTRIES(f16, F16, 64, 128, 8)
MOEFUSE_SM90_ENTRIES(f16, F16, 64, 256, 5)
