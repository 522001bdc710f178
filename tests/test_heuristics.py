"""Tile and load-strategy choices (host logic, no GPU)."""

import pytest

from moefuse import heuristics
from moefuse.plan import plan_capacity

SMS = 132
TILE_MS = (64, 128)
NARROW_ROWS, WIDE_ROWS = 256, 192  # the swapped geometries' chunk rows (checked in test_swapped_...)


@pytest.fixture(scope="module")
def widths(specs):
    """(tile_m, op) -> BN of the Hopper row-major kernels, widest first, from their contracts."""
    found = {}
    for s in specs["sm_90a"]:
        if s.tags.get("family") == "rows" and s.tags["elem"] == "bf16" and s.tags["w"] == "k":
            found.setdefault((s["tile_m"], s.tags["op"]), set()).add(s["tile_n"])
    return {key: tuple(sorted(v, reverse=True)) for key, v in found.items()}


@pytest.fixture
def choose(widths):
    """(BN, k_splits) as the Hopper backend chooses them: SwiGLU kernels make BN / 2 outputs."""

    def choose(m, n, depth, swiglu, can_split, tile_m=128, top_k=8, out_itemsize=4):
        bns = widths[(tile_m, "gemm1_gated" if swiglu else "gemm2_store")]
        out_cols = tuple(bn // 2 if swiglu else bn for bn in bns)
        max_splits = heuristics.max_scatter_splits(top_k, out_itemsize) if can_split else 1
        cols, splits = heuristics.choose_sm90_tiles(m, n, depth, SMS, max_splits, out_cols, 64)
        return bns[out_cols.index(cols)], splits

    return choose


def tiles(num_tokens, top_k, experts):
    return plan_capacity(num_tokens, top_k, experts, 128).tiles


@pytest.mark.parametrize("num_tokens", [1024, 4096, 16384])
def test_large_batches_take_the_widest_tile(choose, num_tokens):
    m = tiles(num_tokens, 2, 8)
    assert choose(m, 14336, 4096, True, False) == (256, 1)
    assert choose(m, 4096, 14336, False, True) == (256, 1)


def test_decode_keeps_wide_tiles_while_they_fill_the_sms_and_splits_k_where_atomics_sum(choose):
    # Mixtral T=1: 2 tiles x 112 units of 128 outputs fill the SMs: the widest tile stays (64-wide
    # tiles, better balanced over the waves, measured 50% slower: docs/DESIGN.md D5).
    assert choose(2, 14336, 4096, True, False) == (256, 1)
    # DeepSeek-V3 T=1: 8 tiles x 16 = 128 units of 256 < 132 SMs: the next width down.
    assert choose(8, 2048, 7168, True, False) == (128, 1)
    # Qwen3-like GEMM2 with too few units even at BN=64: split K when the epilogue reduces...
    bn, splits = choose(1, 1024, 8192, False, True)
    assert bn == 64 and splits == round(SMS / 16)
    # ... and never for the plain-store epilogue, nor below four 64-deep K blocks per split.
    assert choose(1, 1024, 8192, False, False) == (64, 1)
    assert choose(1, 1024, 512, False, True) == (64, 2)


@pytest.mark.parametrize("tile_m", TILE_MS)
def test_chosen_units_always_cover_the_sms_or_the_problem(choose, widths, tile_m):
    bns = widths[(tile_m, "gemm2_store")]
    for m in (1, 2, 7, 64, 300):
        for n in (256, 768, 2048, 7168, 14336):
            bn, splits = choose(m, n, 2048, False, True, tile_m)
            assert bn in bns and splits >= 1
            assert m * -(-n // bn) * splits >= min(SMS, m * -(-n // bns[-1]))


def test_64_row_tiles_keep_each_warpgroup_mma_64_wide(choose, widths):
    # At BM = 64 the warpgroups split BN; wgmma.cuh has N >= 64, so BN >= 128.
    for op in ("gemm1_gated", "gemm2_store", "gemm2_scatter"):
        assert widths[(64, op)] == (256, 128)
        assert widths[(128, op)] == (256, 128, 64)
    # Qwen3 T=1 (8 tiles): no width fills the SMs, so both take the narrowest; GEMM2's 128
    # units come close enough to the 132 SMs that K stays whole.
    assert choose(8, 768, 2048, True, False, 64) == (128, 1)
    assert choose(8, 2048, 768, False, True, 64) == (128, 1)
    assert choose(2, 2048, 768, False, True, 64) == (128, 3)


def test_no_k_split_is_empty(choose):
    """The kernel gives split i the K blocks [i * per, min((i + 1) * per, k_blocks)), per =
    ceil(k_blocks / splits): every split must get at least one (H=256, I=6464, T=1 once got 25
    splits of 5 blocks for 101)."""
    for units_m, n in ((1, 256), (1, 64), (2, 512), (3, 1024), (1, 1024)):
        for depth in range(64, 64 * 400, 64 * 3 + 8):
            _, splits = choose(units_m, n, depth, False, True)
            k_blocks = -(-depth // 64)
            per = -(-k_blocks // splits)
            assert (splits - 1) * per < k_blocks, (units_m, n, depth, splits)
    assert choose(1, 256, 6464, False, True) == (64, 21)


@pytest.mark.parametrize(
    "num_tokens, top_k, experts, tile_m",
    [
        (1, 8, 128, 64),  # Qwen3 decode
        (1024, 8, 256, 64),  # DeepSeek-V3 T=1024: 32 rows per expert fit one 64-row tile
        (1024, 8, 128, 128),  # Qwen3 T=1024: 64 rows per expert would need two
        (4096, 8, 256, 128),
        (16, 2, 8, 64),  # Mixtral T=16: no expert can get more than 64 rows
        (64, 2, 8, 64),
        (128, 2, 8, 128),  # Mixtral T=128: a hot expert's second tile would be an extra wave
        (128, 8, 128, 64),  # Qwen3 T=128: many experts
    ],
)
def test_hopper_tile_m_keeps_an_average_expert_in_one_tile(num_tokens, top_k, experts, tile_m):
    assert heuristics.choose_sm90_tile_m(num_tokens, top_k, experts, TILE_MS) == tile_m


def test_fused_gemm2_into_16_bit_outputs_caps_the_rounded_adds(choose):
    """Every atomic add into a bf16 / fp16 output rounds: at most 8 per element."""
    assert [heuristics.max_scatter_splits(k, 2) for k in (1, 2, 3, 4, 5, 8)] == [1, 1, 2, 2, 1, 1]
    # T=1, H=256, I=6464, k=3 (3 M tiles x 2 n tiles, 101 K blocks): 21 splits into float32, 2 into bf16
    assert choose(3, 256, 6464, False, True, 64, top_k=3, out_itemsize=4)[1] == 21
    assert choose(3, 256, 6464, False, True, 64, top_k=3, out_itemsize=2)[1] == 2


def test_fused_gemm2_splits_k_only_where_the_sum_order_already_varies(choose):
    """Two atomic adds onto zero commute, more do not, and a split's partial sums differ from the
    unsplit sum of a larger batch: with k <= 2 the fused output is promised bitwise reproducible
    and batch invariant, so it never splits."""
    assert [heuristics.max_scatter_splits(k, 4) for k in (1, 2, 3, 8)] == [1, 1, None, None]
    # Mixtral-like decode (2 M tiles, H = 4096, I = 14336): k = 8 would split, k = 2 must not.
    assert choose(2, 4096, 14336, False, True, 64, top_k=8)[1] > 1
    assert choose(2, 4096, 14336, False, True, 64, top_k=2)[1] == 1
    assert choose(2, 4096, 14336, False, True, 64, top_k=1)[1] == 1


@pytest.mark.parametrize("max_rows", [NARROW_ROWS, WIDE_ROWS])
@pytest.mark.parametrize("seed", range(20))
def test_max_expert_chunks_bounds_every_routing(seed, max_rows):
    """The swapped kernels' grid is sized by max_expert_chunks: it must cover any routing."""
    import numpy as np

    rng = np.random.default_rng(seed)
    experts = int(rng.integers(1, 300))
    pairs = int(rng.integers(1, 5000))
    hot = rng.random(experts) ** 8  # skewed: a few experts take most rows
    counts = np.bincount(rng.choice(experts, pairs, p=hot / hot.sum()), minlength=experts)
    chunks = int(np.sum(-(-counts // max_rows)))
    assert chunks <= heuristics.max_expert_chunks(pairs, experts, max_rows)


@pytest.mark.parametrize(
    "num_tokens, top_k, experts, wide",
    [
        (4096, 8, 256, False),  # DeepSeek-V3 T=4096: 128 rows per expert, one chunk either way
        (6144, 8, 256, False),  # 192: wide chunk counts vary (1 or 2)
        (8192, 8, 256, True),  # 256: narrow ones vary (1 or 2), wide ones do not (2)
        (12288, 8, 256, False),  # 384: narrow 2, wide 2 or 3
        (16384, 8, 256, True),  # 512: narrow 2 or 3, wide 3
        (1024, 2, 8, True),  # Mixtral T=1024: 256
        (4096, 2, 8, False),  # 1024: both vary
        (8192, 2, 8, True),  # 2048: many chunks per expert
        (16384, 2, 8, True),
    ],
)
def test_swapped_tile_geometry_by_rows_per_expert(num_tokens, top_k, experts, wide):
    geometry = heuristics.choose_sm90_swapped_tiles(num_tokens, top_k, experts, NARROW_ROWS, WIDE_ROWS)
    assert geometry == ("wide" if wide else "narrow")


def test_swapped_geometries_chunk_rows(specs):
    rows = {s.tags["geometry"]: s["max_rows"] for s in specs["sm_90a"] if s.tags.get("family") == "swapped"}
    assert rows == {"narrow": NARROW_ROWS, "wide": WIDE_ROWS}


def test_wide_tiles_below_2048_rows_are_guarded_against_a_busy_expert():
    assert heuristics.wide_tiles_busiest_limit(8192, 8, 256) == 512  # 256 rows per expert
    assert heuristics.wide_tiles_busiest_limit(1024, 2, 8) == 512
    assert heuristics.wide_tiles_busiest_limit(8192, 2, 8) is None  # 2048: wide whatever the routing


@pytest.mark.parametrize(
    "num_tokens, top_k, experts, inter, swapped",
    [
        (1024, 2, 8, 14336, True),  # Mixtral: 256 rows per expert, a third of them padding otherwise
        (4096, 2, 8, 14336, True),
        (16384, 2, 8, 14336, True),  # the gather pass is < 1% of the GEMMs at I = 14336
        (1024, 8, 256, 2048, False),  # DeepSeek-V3: 32 rows per expert fit 64-row tiles
        (4096, 8, 256, 2048, True),  # 128 rows per expert: 1.5x the rows in 128-row tiles
        (16384, 8, 256, 2048, True),
        (4096, 8, 128, 768, False),  # Qwen3: the gather pass costs ~9% at I = 768
        (16384, 8, 128, 768, False),
        (2048, 8, 128, 768, True),  # ... but at 128 rows per expert the GEMMs stream weights
        (3072, 8, 128, 768, True),  # 192
        (3200, 8, 128, 768, False),  # 200
        (1024, 8, 128, 768, False),  # 64 rows per expert fit 64-row tiles
        (2048, 4, 60, 712, True),  # 137 rows per expert, measured +13%
        (64, 8, 128, 768, False),  # decode
    ],
)
def test_swapped_kernels_where_the_padding_they_save_outweighs_the_gather(
    num_tokens, top_k, experts, inter, swapped
):
    assert heuristics.choose_sm90_swapped(num_tokens, top_k, experts, inter) == swapped


NUMBERS = {"max_experts": 512, "narrow_rows": NARROW_ROWS, "wide_rows": WIDE_ROWS}


def test_swapped_launches_pair_the_guarded_geometries():
    def launches(num_tokens, top_k, experts, inter=2048, **forced):
        return heuristics.swapped_launches(num_tokens, top_k, experts, inter, NUMBERS, **forced)

    assert launches(4096, 8, 256) == [("narrow", 0)]  # DeepSeek-V3 T=4096: 128 rows per expert
    assert launches(8192, 8, 256) == [("wide", 512), ("narrow", -512)]  # 256: wide, guarded
    assert launches(16384, 2, 8) == [("wide", 0)]  # 4096 rows per expert: wide whatever the routing
    assert launches(1024, 8, 256) == []  # 32 rows per expert: the row-major kernels
    assert launches(1024, 8, 256, family="swapped") == [("narrow", 0)]
    assert launches(4096, 8, 256, family="wide") == [("wide", 0)]
    assert launches(4096, 8, 256, family="wide", busiest_limit=100) == [("wide", 100), ("narrow", -100)]
    assert launches(16384, 2, 8, family="rows") == []


def test_swapped_kernels_need_the_expert_tables_to_fit():
    experts = NUMBERS["max_experts"] + 1
    assert heuristics.choose_sm90_swapped(128 * experts, 1, experts, 14336)
    assert heuristics.swapped_launches(128 * experts, 1, experts, 14336, NUMBERS) == []
    with pytest.raises(ValueError, match="at most 512 local experts"):
        heuristics.swapped_launches(128 * experts, 1, experts, 14336, NUMBERS, family="swapped")


def test_swapped_numbers_are_the_kernels(specs):
    narrow = [s for s in specs["sm_90a"] if s.tags.get("geometry") == "narrow"]
    assert {s["max_experts"] for s in narrow} == {NUMBERS["max_experts"]}
