"""Tile shapes and kernel families per problem.

tile_m (the M extent of a grouped-GEMM tile, and the padding unit of each expert's segment):
64 for decode and small batches (less padding to multiply), else 128 (twice the reuse of every
weight tile loaded). The portable kernels switch at 128 rows per expert; the Hopper ones keep 64
only while an expert's rows fit one tile (choose_sm90_tile_m). Where padding still costs more
than a gather pass of x, the Hopper GEMMs swap their operands instead (choose_sm90_swapped): the
plan's padding is then never multiplied. Those come in two tile geometries
(choose_sm90_swapped_tiles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SMALL_TILE_M = 64
LARGE_TILE_M = 128


def choose_tile_m(num_tokens: int, top_k: int, num_local_experts: int) -> int:
    rows_per_expert = num_tokens * top_k / num_local_experts
    return SMALL_TILE_M if rows_per_expert < LARGE_TILE_M else LARGE_TILE_M


SM90_LARGE_TILE_FROM_ROWS = 48
SM90_SMALL_TILE_MIN_EXPERTS = 64


def choose_sm90_tile_m(num_tokens: int, top_k: int, num_local_experts: int) -> int:
    """The Hopper kernels' M tile. 64 rows halve the padding rows that the MMAs multiply, and pay
    as long as each expert's rows fit one tile; an expert needing two reads its weights twice
    (Qwen3 T=1024, 64 rows per expert: 64-row tiles measured 5-10% slower, docs/PERF.md).

    So 64 when no expert can get more than 64 rows (T <= 64), or when the average expert has
    fewer than 48 (room for a random routing's spread) and there are enough experts that a hot
    one's extra tiles are a small part of the grid. With few experts, skewed routing turns the
    extra tiles into an extra wave: Mixtral T=128 with half the tokens on one expert ran 9
    tiles x 16 on 132 SMs, 92% -> 85% of the floor."""
    if num_tokens <= SMALL_TILE_M:
        return SMALL_TILE_M
    rows_per_expert = num_tokens * top_k / num_local_experts
    many_experts = num_local_experts >= SM90_SMALL_TILE_MIN_EXPERTS
    return SMALL_TILE_M if rows_per_expert < SM90_LARGE_TILE_FROM_ROWS and many_experts else LARGE_TILE_M


@dataclass(frozen=True)
class SwappedTiles:
    """A tile geometry of cuda_src/sm90/swapped.cuh (swapped::Tiles)."""

    weight_rows: int  # BW: the MMAs' M side per tile
    max_rows: int  # MAX_ROWS: token rows per chunk, the MMAs' N
    stages: int
    module: str  # the kernels' module and name prefix (then _{dtype})


SWAPPED_NARROW = SwappedTiles(weight_rows=128, max_rows=256, stages=4, module="sm90_swapped")
SWAPPED_WIDE = SwappedTiles(weight_rows=256, max_rows=192, stages=3, module="sm90_swapped_wide")
SWAPPED_TILES = (SWAPPED_NARROW, SWAPPED_WIDE)
SWAPPED_WIDE_FROM_ROWS = 2048  # per expert, on average: wide whatever the chunk counts
SWAPPED_WIDE_MAX_IMBALANCE = 2.0  # below that: wide only while no expert has more x the average
SWAPPED_MAX_EXPERTS = 512  # local experts whose tables fit in the kernels' shared memory


SWAPPED_MIN_ROWS = 96  # per expert, on average
SWAPPED_ANY_INTER_MAX_ROWS = 192  # per expert: up to here the gather's share does not matter
GATHER_SHARE_PER_INTER = 63.0  # (2 bytes x ~790 TFLOP/s) / (6 FLOPs x ~4.2 TB/s), see below
SWAPPED_MAX_GATHER_SHARE = 0.05


def choose_sm90_swapped(num_tokens: int, top_k: int, num_local_experts: int, inter: int) -> bool:
    """Whether the Hopper GEMMs put the weights on the MMA's M side and each expert's tokens on
    its N side (cuda_src/sm90/swapped.cuh). Those multiply no padding rows and read each weight
    tile with all of an expert's chunks in step, but need x in permuted order: a gather pass that
    reads x once and writes its T*k rows, (1 + 1/k) * T*k*H*2 bytes against the GEMMs'
    6 * T*k*H*I FLOPs, a share of about (1 + 1/k) * 63 / I of their time.

    Same-process A/B of whole forwards (docs/PERF.md, change 27): with at least ~96 rows per
    expert the swapped kernels won or tied wherever that share is small, and lost where it is
    not: H100 DeepSeek-V3 T=4096 / 16384 -31% / -38%, Mixtral T=16384 -11%; H200 DeepSeek-V3
    T=4096 -21%, Mixtral T=1024 -9%, T=4096 -4%, T=16384 and DeepSeek-V3 T=16384 ties; Qwen3
    (I = 768, a share of ~9%) +10 to +13% at T=16384 on both. Below ~96 rows per expert the
    row-major kernels' 64-row tiles already hold the padding down (DeepSeek-V3 T=1024: a tie).

    Up to ~192 rows per expert the GEMMs stream their weights for longer than they multiply, the
    gather weighs less than the share says, and most experts fill two 128-row tiles. There the
    swapped kernels won at every I measured (change 56, H100, graph replays; H,I,E,k): T=1024 of
    2048,1024,64,8 (128 rows) +3.7%, T=2048 of Qwen3 (128) +2.7%, of 1032,712,60,4 (137) +13%,
    of 2048,1408,64,6 (192) +7.6%; at 256 rows (2048,1024,64,8 T=2048) they lost 4.8%.
    So: r >= 96 rows per expert, and r <= 192 or a gather share of at most 5%."""
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


def choose_sm90_swapped_tiles(num_tokens: int, top_k: int, num_local_experts: int) -> SwappedTiles:
    """The swapped kernels' tile geometry. The wide tiles (256 weight rows x up to 192 tokens)
    ask the L2 for ~22% fewer bytes per FLOP than the narrow ones (128 x 256), with three stages
    instead of four, and their chunks are cut at multiples of 192 rows instead of 256.

    Same-process A/B of whole forwards, wide / narrow (docs/PERF.md, change 53, H100), by rows
    per expert r: 128: DeepSeek-V3 1.10, Mixtral 0.99; 192: DeepSeek-V3 1.10; 256: DeepSeek-V3
    0.94, Mixtral 0.95; 384: DeepSeek-V3 1.22; 512: DeepSeek-V3 0.96, Mixtral 1.02-1.03; 1024:
    Mixtral 0.99-1.02; 2048: 0.97; 4096: 0.95. Where r sits at a multiple of one geometry's chunk
    size, that geometry's experts split into different chunk counts and it loses; with many
    chunks per expert the wide tiles' L2 saving wins. So: wide from 2048 rows per expert, and
    below where the narrow chunk counts vary and the wide ones do not (then guarded:
    wide_tiles_busiest_limit)."""
    rows = num_tokens * top_k / num_local_experts
    if rows >= SWAPPED_WIDE_FROM_ROWS:
        return SWAPPED_WIDE
    if chunk_counts_vary(rows, SWAPPED_NARROW.max_rows) and not chunk_counts_vary(
        rows, SWAPPED_WIDE.max_rows
    ):
        return SWAPPED_WIDE
    return SWAPPED_NARROW


def wide_tiles_busiest_limit(num_tokens: int, top_k: int, num_local_experts: int) -> int | None:
    """Where choose_sm90_swapped_tiles picks the wide tiles for evenly split chunks (below 2048
    rows per expert), that holds for balanced routing only. The most rows an expert may then have
    (the kernels read the plan's counts and run the narrow tiles instead past it), or None.

    Same-process A/B with half the tokens on expert 0 (docs/PERF.md, change 53), wide / narrow:
    Mixtral T=1024 1.08, T=2048 1.13, DeepSeek-V3 T=8192 1.00, T=16384 1.03; Mixtral T=16384
    (4096 rows per expert, unguarded) 0.89."""
    rows = num_tokens * top_k / num_local_experts
    if rows >= SWAPPED_WIDE_FROM_ROWS:
        return None
    return int(SWAPPED_WIDE_MAX_IMBALANCE * rows)


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
    swiglu: bool,
    max_splits: int | None,
    widths: tuple[int, ...],
) -> tuple[int, int]:
    """(BN, k_splits) for a Hopper grouped GEMM with up to `max_tiles` M tiles and `n` output
    columns (SwiGLU: a BN-wide B tile makes BN/2 outputs), BN one of `widths` (widest first).

    The widest tile that still gives every SM a unit of work. When even the narrowest leaves SMs
    idle (decode), a GEMM whose epilogue reduces with atomics splits K (at most `max_splits`
    ways, None for no limit) so that the units come to about one per SM (each split keeps at
    least four 64-deep K blocks, and none is empty)."""
    for bn in widths:
        units = max_tiles * -(-n // (bn // 2 if swiglu else bn))
        if units >= num_sms:
            return bn, 1
    k_blocks = -(-depth // 64)
    splits = max(1, min(round(num_sms / units), k_blocks // 4, max_splits or k_blocks))
    # The kernel slices K into per_split-block pieces; only as many splits as those pieces fill
    # (an empty slice would add its stale accumulators into the output).
    per_split = -(-k_blocks // splits)
    return bn, -(-k_blocks // per_split)


MAX_16BIT_ADDS = 8  # atomic adds into one bf16 / fp16 output element


def max_scatter_splits(top_k: int, out_itemsize: int) -> int | None:
    """The most K splits of the fused GEMM2. Each output element receives top_k * splits atomic
    adds. Only two adds onto zero commute, and the output is promised bitwise reproducible for
    k <= 2: so k = 2 never splits, k = 1 up to two ways.

    From k = 3 the order already varies, but into a 16-bit output every add rounds to it, and the
    error grows about as sqrt(adds): k = 3 with 21 splits (63 adds per element) measured a relative
    error of 1.04e-2 in bf16 on an H100, over the 1e-2 the tests allow (docs/PERF.md). So 16-bit
    outputs take at most MAX_16BIT_ADDS adds (~5e-3 expected); float32 outputs split freely
    (None)."""
    if top_k <= 2:
        return 2 // top_k
    return max(1, MAX_16BIT_ADDS // top_k) if out_itemsize < 4 else None
