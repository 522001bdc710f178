// The Hopper grouped GEMMs with swapped operands and narrow tiles (128 weight rows x up to 256
// tokens), f16, for weights stored [K, N] (transformers' is_transposed) with gate and up
// interleaved (gpt-oss): the weights are A, read MN-major in place. A module of its own: only a
// model with that layout compiles it.
#include "swapped.cuh"

MOEFUSE_SM90_SWAPPED_MN_ENTRIES(sm90_swapped_mn, narrow, Narrow, f16, F16)
