"""The plan's host-side logic: the capacity bound and the numpy reference against brute force."""

import itertools

import numpy as np
import pytest

from moefuse import plan_capacity, reference


def brute_force_plan(topk_ids, first_expert, num_local, tile_m, rows, tiles):
    flat = [int(v) for v in np.asarray(topk_ids).reshape(-1)]
    p2e, e2p, tile_expert = [-1] * rows, [-1] * len(flat), [-1] * tiles
    counts, offsets, row = [], [0], 0
    for e in range(num_local):
        pairs = [i for i, v in enumerate(flat) if v - first_expert == e]
        counts.append(len(pairs))
        for r, i in enumerate(pairs):
            p2e[row + r] = i
            e2p[i] = row + r
        n_tiles = -(-len(pairs) // tile_m)
        for t in range(n_tiles):
            tile_expert[row // tile_m + t] = e
        row += n_tiles * tile_m
        offsets.append(row)
    return {
        "expert_counts": counts,
        "expert_offsets": offsets,
        "permuted_to_expanded": p2e,
        "expanded_to_permuted": e2p,
        "tile_expert": tile_expert,
    }


@pytest.mark.parametrize("trial", range(40))
def test_reference_plan_matches_brute_force(rng, trial):
    num_experts = int(rng.integers(1, 20))
    top_k = int(rng.integers(1, num_experts + 1))
    num_tokens = int(rng.integers(1, 60))
    first = int(rng.integers(0, num_experts))
    num_local = int(rng.integers(1, num_experts - first + 1))
    tile_m = int(rng.choice([1, 4, 16, 64]))
    ids = np.stack([rng.permutation(num_experts)[:top_k] for _ in range(num_tokens)]).astype(np.int32)
    ids[rng.random(ids.shape) < 0.1] = -1  # dropped pairs
    cap = plan_capacity(num_tokens, top_k, num_local, tile_m)
    got = reference.plan(ids, first, num_local, tile_m, cap.rows, cap.tiles)
    want = brute_force_plan(ids, first, num_local, tile_m, cap.rows, cap.tiles)
    for name, values in want.items():
        np.testing.assert_array_equal(got[name], np.asarray(values), err_msg=name)


@pytest.mark.parametrize(
    "num_tokens, top_k, num_local, tile_m",
    [(1, 1, 1, 4), (2, 2, 3, 4), (3, 2, 4, 3), (4, 1, 2, 2), (2, 3, 3, 2)],
)
def test_capacity_is_the_tight_bound_over_all_routings(num_tokens, top_k, num_local, tile_m):
    cap = plan_capacity(num_tokens, top_k, num_local, tile_m)
    worst = 0
    for flat in itertools.product(range(num_local), repeat=num_tokens * top_k):
        counts = np.bincount(np.array(flat), minlength=num_local)
        worst = max(worst, int((-(-counts // tile_m)).sum()))
    assert cap.tiles == worst and cap.rows == worst * tile_m


def test_capacity_of_listed_shapes():
    assert plan_capacity(1, 8, 256, 64).tiles == 8
    assert plan_capacity(16384, 8, 256, 128).tiles == (131072 + 256 * 127) // 128
    assert plan_capacity(0, 8, 256, 64).rows == 0
