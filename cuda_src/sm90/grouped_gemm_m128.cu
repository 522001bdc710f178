// The Hopper grouped GEMMs with 128-row tiles: (BN, STAGES) as deep as shared memory allows.
#include "grouped_gemm.cuh"

MOEFUSE_SM90_ENTRIES(bf16, Bf16, 128, 64, 8)
MOEFUSE_SM90_ENTRIES(bf16, Bf16, 128, 128, 6)
MOEFUSE_SM90_ENTRIES(bf16, Bf16, 128, 256, 4)
MOEFUSE_SM90_ENTRIES(f16, F16, 128, 64, 8)
MOEFUSE_SM90_ENTRIES(f16, F16, 128, 128, 6)
MOEFUSE_SM90_ENTRIES(f16, F16, 128, 256, 4)
