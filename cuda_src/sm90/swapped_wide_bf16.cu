// The Hopper grouped GEMMs with swapped operands and wide tiles (256 weight rows x up to 192
// tokens), bf16. One module per element type and geometry: each compiles 12 MMA widths per kernel,
// and the modules compile in parallel at a cold start.
#include "swapped.cuh"

MOEFUSE_SM90_SWAPPED_ENTRIES(sm90_swapped_wide, wide, Wide, bf16, Bf16)
