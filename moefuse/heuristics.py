"""Tile shapes and kernel families per problem: the rules behind a forward configuration
(moefuse/backends.py), each with the measurement that set it in docs/DESIGN.md.

tile_m (the M extent of a grouped-GEMM tile, and the padding unit of each expert's segment): the
small tile for decode and small batches (less padding to multiply), else the large one (twice the
reuse of every weight tile loaded). Where padding still costs more than a gather pass of x, the
Hopper GEMMs swap their operands instead (choose_sm90_swapped), in two tile geometries
(choose_sm90_swapped_tiles). The kernels' own numbers (tile sizes, chunk rows) come in as
arguments, read from their published contracts.
"""

from __future__ import annotations

import math


def choose_tile_m(num_tokens: int, top_k: int, num_local_experts: int, tile_ms: tuple[int, int]) -> int:
    """The portable kernels' M tile, of the (small, large) ones they have: small until an average
    expert fills a large tile."""
    small, large = tile_ms
    return small if num_tokens * top_k / num_local_experts < large else large


SM90_LARGE_TILE_FROM_ROWS = 48
SM90_SMALL_TILE_MIN_EXPERTS = 64


def choose_sm90_tile_m(num_tokens: int, top_k: int, num_local_experts: int, tile_ms: tuple[int, int]) -> int:
    """The Hopper kernels' M tile, of the (small, large) `tile_ms` (docs/DESIGN.md D4): small
    while each expert's rows fit one small tile, i.e. when no expert can get more (T <= small),
    or when the average expert has fewer than 48 rows (room for a random routing's spread) and
    there are enough experts that a hot one's extra tiles are a small part of the grid."""
    small, large = tile_ms
    if num_tokens <= small:
        return small
    rows_per_expert = num_tokens * top_k / num_local_experts
    many_experts = num_local_experts >= SM90_SMALL_TILE_MIN_EXPERTS
    return small if rows_per_expert < SM90_LARGE_TILE_FROM_ROWS and many_experts else large


SWAPPED_WIDE_FROM_ROWS = 2048  # per expert, on average: wide whatever the chunk counts
SWAPPED_WIDE_MAX_IMBALANCE = 2.0  # below that: wide only while no expert has more x the average


SWAPPED_MIN_ROWS = 96  # per expert, on average
SWAPPED_ANY_INTER_MAX_ROWS = 192  # per expert: up to here the gather's share does not matter
GATHER_SHARE_PER_INTER = 63.0  # (2 bytes x ~790 TFLOP/s) / (6 FLOPs x ~4.2 TB/s), see below
SWAPPED_MAX_GATHER_SHARE = 0.05


def choose_sm90_swapped(num_tokens: int, top_k: int, num_local_experts: int, inter: int) -> bool:
    """Whether the Hopper GEMMs put the weights on the MMA's M side and each expert's tokens on
    its N side (docs/DESIGN.md D6). Those multiply no padding rows, but need x in permuted order:
    a gather pass of (1 + 1/k) * T*k*H*2 bytes against the GEMMs' 6 * T*k*H*I FLOPs, a share of
    about (1 + 1/k) * 63 / I of their time. So: at least 96 rows per expert, and at most 192
    (the GEMMs then stream weights for longer than they multiply) or a gather share <= 5%."""
    rows_per_expert = num_tokens * top_k / num_local_experts
    gather_share = (1 + 1 / top_k) * GATHER_SHARE_PER_INTER / inter
    if rows_per_expert < SWAPPED_MIN_ROWS:
        return False
    return rows_per_expert <= SWAPPED_ANY_INTER_MAX_ROWS or gather_share <= SWAPPED_MAX_GATHER_SHARE


def chunk_counts_vary(rows_per_expert: float, max_rows: int) -> bool:
    """Whether experts around the average (+-2 sqrt(r), random routing's spread) split into
    different numbers of chunks of at most `max_rows` rows: their units then differ in size, and
    the experts of 3+ chunks walk their weight blocks in a different order."""
    spread = 2 * math.sqrt(rows_per_expert)
    low, high = rows_per_expert - spread, rows_per_expert + spread
    return math.ceil(low / max_rows) != math.ceil(high / max_rows)


def choose_sm90_swapped_tiles(
    num_tokens: int, top_k: int, num_local_experts: int, narrow_rows: int, wide_rows: int
) -> str:
    """The swapped kernels' tile geometry, "narrow" or "wide" (docs/DESIGN.md D7). The wide
    tiles ask the L2 for ~22% fewer bytes per FLOP; a geometry loses where experts' rows sit at a
    multiple of its chunk rows (`narrow_rows`, `wide_rows`). So: wide from 2048 rows per expert,
    and below where the narrow chunk counts vary and the wide ones do not (then guarded:
    wide_tiles_busiest_limit)."""
    rows = num_tokens * top_k / num_local_experts
    if rows >= SWAPPED_WIDE_FROM_ROWS:
        return "wide"
    if chunk_counts_vary(rows, narrow_rows) and not chunk_counts_vary(rows, wide_rows):
        return "wide"
    return "narrow"


def wide_tiles_busiest_limit(num_tokens: int, top_k: int, num_local_experts: int) -> int | None:
    """Where choose_sm90_swapped_tiles picks the wide tiles for evenly split chunks (below 2048
    rows per expert), that holds for balanced routing only: the most rows an expert may then have
    (the kernels read the plan's counts and run the narrow tiles instead past it), or None
    (docs/DESIGN.md D7)."""
    rows = num_tokens * top_k / num_local_experts
    if rows >= SWAPPED_WIDE_FROM_ROWS:
        return None
    return int(SWAPPED_WIDE_MAX_IMBALANCE * rows)


def swapped_launches(
    num_tokens: int,
    top_k: int,
    num_local_experts: int,
    inter: int,
    kernels: dict[str, int],
    family: str | None = None,
    busiest_limit: int | None = None,
) -> list[tuple[str, int]]:
    """(geometry, busiest-expert guard) of each swapped launch of a Hopper GEMM, or [] for the
    row-major kernels. `kernels`: the swapped kernels' `max_experts` and each geometry's chunk
    rows, `narrow_rows` and `wide_rows`. `family` / `busiest_limit`: forced by moefuse.override.

    One unguarded launch (guard 0), or, where the wide tiles hold for balanced routing only, the
    wide ones while no expert has more than the limit's rows (guard +limit) and the narrow ones
    otherwise (-limit): each CTA reads the plan's counts, and the other kernel returns at once."""
    rows = (num_tokens, top_k, num_local_experts)
    fits = num_local_experts <= kernels["max_experts"]
    if family is None:
        if not (fits and choose_sm90_swapped(*rows, inter)):
            return []
        geometry = choose_sm90_swapped_tiles(*rows, kernels["narrow_rows"], kernels["wide_rows"])
        busiest_limit = wide_tiles_busiest_limit(*rows) if geometry == "wide" else None
    elif family == "rows":
        return []
    elif not fits:
        raise ValueError(f"the swapped kernels take at most {kernels['max_experts']} local experts")
    else:
        geometry = "wide" if family == "wide" else "narrow"
    if busiest_limit is None:
        return [(geometry, 0)]
    return [("wide", busiest_limit), ("narrow", -busiest_limit)]


def max_expert_chunks(pairs: int, num_local_experts: int, max_rows: int) -> int:
    """Most chunks of at most `max_rows` rows that `pairs` routed rows make: at most
    min(E_local, pairs) experts are hit, and sum_e ceil(c_e / m) <= (pairs + hit * (m - 1)) / m."""
    hit = min(num_local_experts, pairs)
    return (pairs + hit * (max_rows - 1)) // max_rows


def choose_sm90_tiles(
    max_tiles: int,
    n: int,
    depth: int,
    num_sms: int,
    max_splits: int | None,
    out_cols: tuple[int, ...],
    tile_k: int,
) -> tuple[int, int]:
    """(output columns per tile, k_splits) for a Hopper grouped GEMM with up to `max_tiles` M
    tiles and `n` output columns; the tile one of the kernels' `out_cols` (widest first), K in
    blocks of `tile_k`.

    The widest tile that still gives every SM a unit of work. When even the narrowest leaves SMs
    idle (decode), a GEMM whose epilogue reduces with atomics splits K (at most `max_splits`
    ways, None for no limit) so that the units come to about one per SM (each split keeps at
    least four K blocks, and none is empty)."""
    for cols in out_cols:
        units = max_tiles * -(-n // cols)
        if units >= num_sms:
            return cols, 1
    k_blocks = -(-depth // tile_k)
    splits = max(1, min(round(num_sms / units), k_blocks // 4, max_splits or k_blocks))
    # The kernel slices K into per_split-block pieces; only as many splits as those pieces fill
    # (an empty slice would add its stale accumulators into the output).
    per_split = -(-k_blocks // splits)
    return cols, -(-k_blocks // per_split)


MAX_16BIT_ADDS = 8  # atomic adds into one bf16 / fp16 output element


def max_scatter_splits(top_k: int, out_itemsize: int) -> int | None:
    """The most K splits of the fused GEMM2 (docs/DESIGN.md D2). Each output element receives
    top_k * splits atomic adds. k <= 2 is promised bitwise reproducible and batch invariant, so it
    never splits: two adds onto zero commute, but a split's rounded partial sums differ from the
    unsplit sum that a larger batch computes. From k = 3, 16-bit outputs take at most
    MAX_16BIT_ADDS rounded adds; float32 outputs split freely (None)."""
    if top_k <= 2:
        return 1
    return max(1, MAX_16BIT_ADDS // top_k) if out_itemsize < 4 else None
