"""Tile shapes and kernel families per problem.

tile_m (the M extent of a grouped-GEMM tile, and the padding unit of each expert's segment):
64 for decode and small batches (less padding to multiply), else 128 (twice the reuse of every
weight tile loaded). The portable kernels switch at 128 rows per expert; the Hopper ones keep 64
only while an expert's rows fit one tile (choose_sm90_tile_m). Where padding still costs more
than a gather pass of x, the Hopper GEMMs swap their operands instead (choose_sm90_swapped): the
plan's padding is then never multiplied.
"""

from __future__ import annotations

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


SWAPPED_MAX_ROWS = 256  # cuda_src/sm90/swapped.cuh: token rows per chunk (the MMA's N)
SWAPPED_MAX_EXPERTS = 512  # ... local experts whose tables fit in its shared memory


SWAPPED_MIN_ROWS = 96  # per expert, on average
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
    So: r >= 96 rows per expert and a gather share of at most 5%."""
    rows_per_expert = num_tokens * top_k / num_local_experts
    gather_share = (1 + 1 / top_k) * GATHER_SHARE_PER_INTER / inter
    return rows_per_expert >= SWAPPED_MIN_ROWS and gather_share <= SWAPPED_MAX_GATHER_SHARE


def max_expert_chunks(pairs: int, num_local_experts: int) -> int:
    """Most chunks of at most SWAPPED_MAX_ROWS rows that `pairs` routed rows make: at most
    min(E_local, pairs) experts are hit, and sum_e ceil(c_e / 256) <= (pairs + hit * 255) / 256."""
    hit = min(num_local_experts, pairs)
    return (pairs + hit * (SWAPPED_MAX_ROWS - 1)) // SWAPPED_MAX_ROWS


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
