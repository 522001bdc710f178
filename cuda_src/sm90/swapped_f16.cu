// The Hopper grouped GEMMs with swapped operands (weights on the MMA's M side, an expert's tokens
// on its N side) and narrow tiles (128 weight rows x up to 256 tokens), f16. One module per element
// type and geometry: each compiles 16 MMA widths per kernel, and the modules compile in parallel at
// a cold start.
#include "swapped.cuh"

MOEFUSE_SM90_SWAPPED_ENTRIES(sm90_swapped, narrow, Narrow, f16, F16)
