"""Tile shapes and load strategies per problem.

tile_m (the M extent of a grouped-GEMM tile, and the padding unit of each expert's segment):
64 when the average expert gets fewer than 128 rows (decode and small batches: less padding to
multiply), else 128 (twice the reuse of every weight tile loaded).
"""

from __future__ import annotations

SMALL_TILE_M = 64
LARGE_TILE_M = 128


def choose_tile_m(num_tokens: int, top_k: int, num_local_experts: int) -> int:
    rows_per_expert = num_tokens * top_k / num_local_experts
    return SMALL_TILE_M if rows_per_expert < LARGE_TILE_M else LARGE_TILE_M


def choose_sm90_tiles(
    max_tiles: int, n: int, depth: int, num_sms: int, swiglu: bool, can_split: bool
) -> tuple[int, int]:
    """(BN, k_splits) for a Hopper grouped GEMM with up to `max_tiles` M tiles and `n` output
    columns (SwiGLU: a BN-wide B tile makes BN/2 outputs).

    The widest tile (256, 128, 64) that still gives every SM a unit of work. When even BN = 64
    leaves SMs idle (decode), a GEMM whose epilogue reduces with atomics splits K so that the
    units come to about one per SM (each split keeps at least four 64-deep K blocks, and none is
    empty)."""
    for bn in SM90_TILE_N:
        units = max_tiles * -(-n // (bn // 2 if swiglu else bn))
        if units >= num_sms:
            return bn, 1
    if not can_split:
        return bn, 1
    k_blocks = -(-depth // 64)
    splits = max(1, min(round(num_sms / units), k_blocks // 4))
    # The kernel slices K into per_split-block pieces; only as many splits as those pieces fill
    # (an empty slice would add its stale accumulators into the output).
    per_split = -(-k_blocks // splits)
    return bn, -(-k_blocks // per_split)


SM90_TILE_N = (256, 128, 64)
