"""Tile shapes per problem.

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
