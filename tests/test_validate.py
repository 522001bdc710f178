"""Argument errors, checked without a GPU: each names the argument at fault."""

import ml_dtypes
import numpy as np
import pytest

import moefuse
from moefuse import _validate

BF16 = ml_dtypes.bfloat16
E, H, INTER, T, K = 4, 64, 32, 5, 2


def weights(dtype=BF16, e=E, h=H, i=INTER):
    return np.empty((e, 2 * i, h), dtype), np.empty((e, h, i), dtype)


def check_inputs(x=None, topk_weights=None, topk_ids=None, num_experts=E):
    x = np.empty((T, H), BF16) if x is None else x
    topk_weights = np.empty((T, K), np.float32) if topk_weights is None else topk_weights
    topk_ids = np.empty((T, K), np.int32) if topk_ids is None else topk_ids
    dims = _validate.check_expert_weights(*weights())
    return _validate.check_moe_inputs(x, topk_weights, topk_ids, dims, num_experts)


def test_valid_arguments_pass():
    assert check_inputs() == (T, K)
    dims = _validate.check_expert_weights(*weights(np.float16), np.empty((E, 2 * INTER), np.float16))
    assert (dims.num_local_experts, dims.hidden, dims.intermediate) == (E, H, INTER)


@pytest.mark.parametrize(
    "call, match",
    [
        (
            lambda: moefuse.fused_moe(np.empty((T, H), BF16), *weights(), np.empty((T, K)), np.empty((T, K))),
            "x must be a GPU array",
        ),
        (lambda: moefuse.route(np.empty((T, E), np.float32), 2), "router_logits must be a GPU array"),
        (lambda: moefuse.plan(np.empty((T, K), np.int32), E), "topk_ids must be a GPU array"),
        (lambda: moefuse.MoELayer(np.empty((E, 2 * INTER, H), BF16), None), "w1 must be a GPU array"),
    ],
)
def test_host_arrays_are_rejected_by_name(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_foreign_gpu_array_without_gpu_raises_no_gpu_error():
    from tests.conftest import GPU

    if GPU:
        pytest.skip("this machine has a GPU")

    class DeviceArrayStandIn:
        @property
        def __cuda_array_interface__(self):
            return {"shape": (1,), "typestr": "<f4", "data": (0, False), "version": 3}

    with pytest.raises(moefuse.NoGPUError, match="needs an NVIDIA GPU"):
        moefuse.route(DeviceArrayStandIn(), 1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"x": np.empty((T, H), np.float32)}, TypeError, "x must be bfloat16 or float16, got float32"),
        ({"x": np.empty((T, H), np.float16)}, TypeError, "x must have the weights' dtype bfloat16"),
        ({"x": np.empty((T, H + 8), BF16)}, ValueError, r"x has H = x.shape\[1\] = 72, but the layer's"),
        (
            {"x": np.empty((T + 1, H), BF16)},
            ValueError,
            r"topk_ids must be \[T, k\] with T = x.shape\[0\] = 6",
        ),
        ({"x": np.empty((T, H, 1), BF16)}, ValueError, "x must be 2-D"),
        ({"topk_ids": np.empty((T, K), np.float32)}, TypeError, "topk_ids must be int32 or int64"),
        ({"topk_ids": np.empty((T, K), np.uint8)}, TypeError, "topk_ids must be int32 or int64"),
        ({"topk_ids": np.empty((T * K,), np.int32)}, ValueError, "topk_ids must be 2-D"),
        ({"topk_weights": np.empty((T, K + 1), np.float32)}, ValueError, "topk_weights must have shape"),
        ({"topk_weights": np.empty((T + 1, K), np.float32)}, ValueError, r"\(T from x, k from topk_ids\)"),
        ({"topk_weights": np.empty((T, K), np.int32)}, TypeError, "topk_weights must be float32"),
        (
            {"topk_ids": np.empty((T, E + 1), np.int32), "topk_weights": np.empty((T, E + 1), np.float32)},
            ValueError,
            r"k \(topk_ids.shape\[1\]\) must be in \[1, num_experts=4\]",
        ),
    ],
)
def test_moe_input_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        check_inputs(**kwargs)


@pytest.mark.parametrize(
    "w1, w2, b1, b2, error, match",
    [
        (
            np.empty((E, 2 * INTER, H), np.float32),
            np.empty((E, H, INTER), np.float32),
            None,
            None,
            TypeError,
            "w1 must be bfloat16 or float16",
        ),
        (
            np.empty((E, 2 * INTER, H), BF16),
            np.empty((E, H, INTER), np.float16),
            None,
            None,
            TypeError,
            "w2 must have w1's dtype",
        ),
        (
            np.empty((E, 2 * INTER, H), BF16),
            np.empty((E, H, INTER + 8), BF16),
            None,
            None,
            ValueError,
            r"w2 must have shape \[E, H, I\]",
        ),
        (
            np.empty((E, 2 * INTER + 1, H), BF16),
            np.empty((E, H, INTER), BF16),
            None,
            None,
            ValueError,
            "dim 1 is odd",
        ),
        (
            np.empty((E, 2 * INTER), BF16),
            np.empty((E, H, INTER), BF16),
            None,
            None,
            ValueError,
            "w1 must be 3",
        ),
        (*weights(h=60), None, None, ValueError, "H .hidden size. must be a positive multiple of 8"),
        (*weights(i=12), None, None, ValueError, "I .intermediate size. must be a positive multiple of 8"),
        (*weights(), np.empty((E, INTER), BF16), None, ValueError, r"b1 must have shape \[E, 2I\]"),
        (*weights(), None, np.empty((E, H), np.float16), TypeError, "b2 must have w1's dtype"),
    ],
)
def test_weight_errors(w1, w2, b1, b2, error, match):
    with pytest.raises(error, match=match):
        _validate.check_expert_weights(w1, w2, b1, b2)


def test_route_argument_errors():
    logits = np.empty((T, E), np.float32)
    assert _validate.check_router_logits(logits, E) == (T, E)
    with pytest.raises(ValueError, match=r"k must be in \[1, num_experts=4\]"):
        _validate.check_router_logits(logits, E + 1)
    with pytest.raises(ValueError, match=r"k must be in"):
        _validate.check_router_logits(logits, 0)
    with pytest.raises(TypeError, match="k must be an int"):
        _validate.check_router_logits(logits, 2.0)
    with pytest.raises(TypeError, match="router_logits must be a float array"):
        _validate.check_router_logits(np.empty((T, E), np.int32), 2)
    assert _validate.check_router_logits(np.empty((T, E), BF16), 2) == (T, E)


def test_expert_range_errors():
    assert _validate.check_expert_range(16, 4, None) == 12
    assert _validate.check_expert_range(16, 4, 8) == 8
    with pytest.raises(ValueError, match="first_expert must be in"):
        _validate.check_expert_range(16, 16, None)
    with pytest.raises(ValueError, match="num_local_experts must be in"):
        _validate.check_expert_range(16, 4, 13)
    with pytest.raises(TypeError, match="num_experts must be an int"):
        _validate.check_expert_range(16.0, 0, None)
    with pytest.raises(ValueError, match="tile_m must be one of"):
        _validate.check_tile_m(96, (64, 128))


def test_out_and_dtype_errors():
    assert _validate.resolve_out_dtype(None, BF16) == np.dtype(BF16)
    assert _validate.resolve_out_dtype(np.float32, BF16) == np.float32
    with pytest.raises(TypeError, match="out_dtype must be"):
        _validate.resolve_out_dtype(np.float16, BF16)
    with pytest.raises(ValueError, match="out must be bfloat16 with shape"):
        _validate.check_out(np.empty((T, H + 8), BF16), (T, H), np.dtype(BF16))
    with pytest.raises(ValueError, match="out must be C-contiguous"):
        _validate.check_out(np.empty((H, T), BF16).T, (T, H), np.dtype(BF16))
    with pytest.raises(ValueError, match="activation must be one of"):
        _validate.check_activation("gelu")


def test_32_bit_indexing_limit():
    _validate.check_plan_fits(2**20, 8, 256, 128)
    with pytest.raises(ValueError, match="exceed 32-bit indexing"):
        _validate.check_plan_fits(2**28, 8, 256, 128)


@pytest.mark.parametrize(
    "x, w1, w2, error, match",
    [
        # The activations define H and the dtype: the weight that disagrees is named, not the other.
        (np.empty((T, H), BF16), *weights(h=H + 8), ValueError, r"w1 must be \[E, 2I, H\] with H = x.shape"),
        (
            np.empty((T, H), BF16),
            weights()[0],
            np.empty((E, H + 8, INTER), BF16),
            ValueError,
            r"w2 must have shape \[E, H, I\] \(E and I from w1, H from x\)",
        ),
        (np.empty((T, H), BF16), *weights(np.float16), TypeError, "w1 must have x's dtype bfloat16"),
        (np.empty((T, H), BF16), weights()[0], weights(np.float16)[1], TypeError, "w2 must have x's dtype"),
        (np.empty((T, H), np.float32), *weights(np.float32), TypeError, "x must be bfloat16 or float16"),
    ],
)
def test_weight_errors_name_the_argument_that_disagrees_with_x(x, w1, w2, error, match):
    with pytest.raises(error, match=match):
        _validate.check_expert_weights(w1, w2, x=x)


def test_counts_must_be_non_negative_ints():
    assert _validate.check_count(0, "num_tokens") == 0
    for bad in (-1, 2.0, True, "3"):
        with pytest.raises(ValueError, match="num_tokens must be a non-negative int"):
            _validate.check_count(bad, "num_tokens")
