"""Tile and load-strategy choices (host logic, no GPU)."""

import pytest

from moefuse import heuristics
from moefuse.plan import plan_capacity

SMS = 132


def tiles(num_tokens, top_k, experts):
    return plan_capacity(num_tokens, top_k, experts, 128).tiles


@pytest.mark.parametrize("num_tokens", [1024, 4096, 16384])
def test_large_batches_take_the_widest_tile(num_tokens):
    m = tiles(num_tokens, 2, 8)
    assert heuristics.choose_sm90_tiles(m, 14336, 4096, SMS, swiglu=True, can_split=False) == (256, 1)
    assert heuristics.choose_sm90_tiles(m, 4096, 14336, SMS, swiglu=False, can_split=True) == (256, 1)


def test_decode_keeps_wide_tiles_while_they_fill_the_sms_and_splits_k_where_atomics_sum():
    # Mixtral T=1: 2 tiles x 112 units of 128 outputs fill the SMs: the widest tile stays (64-wide
    # tiles, better balanced over the waves, measured 50% slower: docs/PERF.md).
    assert heuristics.choose_sm90_tiles(2, 14336, 4096, SMS, swiglu=True, can_split=False) == (256, 1)
    # DeepSeek-V3 T=1: 8 tiles x 16 = 128 units of 256 < 132 SMs: the next width down.
    assert heuristics.choose_sm90_tiles(8, 2048, 7168, SMS, swiglu=True, can_split=False) == (128, 1)
    # Qwen3-like GEMM2 with too few units even at BN=64: split K when the epilogue reduces...
    bn, splits = heuristics.choose_sm90_tiles(1, 1024, 8192, SMS, swiglu=False, can_split=True)
    assert bn == 64 and splits == round(SMS / 16)
    # ... and never for the plain-store epilogue, nor below four 64-deep K blocks per split.
    assert heuristics.choose_sm90_tiles(1, 1024, 8192, SMS, swiglu=False, can_split=False) == (64, 1)
    assert heuristics.choose_sm90_tiles(1, 1024, 512, SMS, swiglu=False, can_split=True) == (64, 2)


def test_chosen_units_always_cover_the_sms_or_the_problem():
    for m in (1, 2, 7, 64, 300):
        for n in (256, 768, 2048, 7168, 14336):
            bn, splits = heuristics.choose_sm90_tiles(m, n, 2048, SMS, swiglu=False, can_split=True)
            assert bn in heuristics.SM90_TILE_N and splits >= 1
            assert m * -(-n // bn) * splits >= min(SMS, m * -(-n // 64))


def test_no_k_split_is_empty():
    """The kernel gives split i the K blocks [i * per, min((i + 1) * per, k_blocks)), per =
    ceil(k_blocks / splits): every split must get at least one (H=256, I=6464, T=1 once got 25
    splits of 5 blocks for 101)."""
    for units_m, n in ((1, 256), (1, 64), (2, 512), (3, 1024), (1, 1024)):
        for depth in range(64, 64 * 400, 64 * 3 + 8):
            _, splits = heuristics.choose_sm90_tiles(units_m, n, depth, SMS, swiglu=False, can_split=True)
            k_blocks = -(-depth // 64)
            per = -(-k_blocks // splits)
            assert (splits - 1) * per < k_blocks, (units_m, n, depth, splits)
    assert heuristics.choose_sm90_tiles(1, 256, 6464, SMS, swiglu=False, can_split=True) == (64, 21)
