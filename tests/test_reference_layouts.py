"""The float64 reference reads every weight layout as the kernels must (no GPU): the same experts
stored each way (moefuse_bench.problems.stored_as) give the same layer output."""

import numpy as np
import pytest

from moefuse import reference
from moefuse.activation import Activation
from moefuse_bench.problems import LAYOUTS, random_ids, stored_as


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("activation", ["swiglu", Activation("gpt_oss", limit=0.5), "gelu_tanh"])
def test_every_layout_is_the_same_layer(rng, layout, activation):
    experts, hidden, inter, tokens, top_k = 4, 24, 16, 9, 2
    w1 = rng.standard_normal((experts, 2 * inter, hidden))
    w2 = rng.standard_normal((experts, hidden, inter))
    b1, b2 = rng.standard_normal((experts, 2 * inter)), rng.standard_normal((experts, hidden))
    x, weights = rng.standard_normal((tokens, hidden)), rng.random((tokens, top_k))
    ids = random_ids(rng, tokens, top_k, experts)
    want = reference.moe(x, w1, w2, weights, ids, b1, b2, activation=activation)
    s1, s2, sb1 = stored_as(w1, w2, b1, **LAYOUTS[layout])
    got = reference.moe(x, s1, s2, weights, ids, sb1, b2, activation=activation, **LAYOUTS[layout])
    # BLAS may sum a transposed operand's products in another order: equal to float64 rounding
    assert reference.relative_error(got, want) < 1e-13
    if LAYOUTS[layout]["interleaved"]:
        assert np.array_equal(sb1[:, 0::2], b1[:, :inter]) and np.array_equal(sb1[:, 1::2], b1[:, inter:])


def test_relu2_transposed(rng):
    w1, w2 = rng.standard_normal((3, 16, 24)), rng.standard_normal((3, 24, 16))
    x, weights, ids = rng.standard_normal((5, 24)), rng.random((5, 2)), random_ids(rng, 5, 2, 3)
    want = reference.moe(x, w1, w2, weights, ids, activation="relu2")
    got = reference.moe(
        x, w1.transpose(0, 2, 1), w2.transpose(0, 2, 1), weights, ids, activation="relu2", transposed=True
    )
    assert reference.relative_error(got, want) < 1e-13
