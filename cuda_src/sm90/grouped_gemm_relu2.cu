// The Hopper not-gated GEMM1 (relu(x w1^T + b1)^2: Nemotron-H) of K-major weights, every tile
// shape. Its own module: only a model with that activation compiles it.
#include "grouped_gemm.cuh"

MOEFUSE_SM90_SHAPES(MOEFUSE_SM90_GEMM1_RELU2, bf16, Bf16, k, false)
MOEFUSE_SM90_SHAPES(MOEFUSE_SM90_GEMM1_RELU2, f16, F16, k, false)
