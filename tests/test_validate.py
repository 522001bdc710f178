"""Argument errors, checked without a GPU: each names the argument at fault."""

import ml_dtypes
import numpy as np
import pytest

import moefuse
from moefuse import _validate
from moefuse._validate import WeightLayout
from moefuse.activation import Activation, as_activation

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
            "its 2I axis is odd",
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


ROUTER_EXPERTS = 256  # DeepSeek-V3's
MAX_GROUPS = 32  # what the router kernels publish (test_contracts checks it)
DEEPSEEK_V3 = dict(method="sigmoid", correction_bias=None, n_group=8, topk_group=4, scaling_factor=2.5)


def check_router(k=8, **changes):
    options = {**DEEPSEEK_V3, **changes}
    _validate.check_router(ROUTER_EXPERTS, k, max_groups=MAX_GROUPS, **options)


@pytest.mark.parametrize(
    "k, changes, error, match",
    [
        (
            8,
            {"method": "topk"},
            ValueError,
            r"method must be one of \('softmax', 'topk_softmax', 'sigmoid'\)",
        ),
        (8, {"method": None}, ValueError, "method must be one of"),
        (8, {"scaling_factor": 0.0}, ValueError, "scaling_factor must be finite and > 0, got 0.0"),
        (8, {"scaling_factor": -2.5}, ValueError, "scaling_factor must be finite and > 0"),
        (8, {"scaling_factor": float("inf")}, ValueError, "scaling_factor must be finite and > 0, got inf"),
        (8, {"scaling_factor": float("nan")}, ValueError, "scaling_factor must be finite and > 0, got nan"),
        (8, {"scaling_factor": "2.5"}, TypeError, "scaling_factor must be a float, got str"),
        (8, {"scaling_factor": True}, TypeError, "scaling_factor must be a float, got bool"),
        (8, {"n_group": 8.0}, TypeError, "n_group must be an int, got float"),
        (8, {"topk_group": None}, TypeError, "topk_group must be an int, got NoneType"),
        (8, {"n_group": 0}, ValueError, r"n_group must be in \[1, 32\], got 0"),
        (8, {"n_group": 64}, ValueError, r"n_group must be in \[1, 32\], got 64"),
        (
            8,
            {"n_group": 3},
            ValueError,
            r"n_group must divide num_experts = router_logits.shape\[1\] = 256, got 3",
        ),
        (8, {"topk_group": 0}, ValueError, r"topk_group must be in \[1, n_group=8\], got 0"),
        (8, {"topk_group": 9}, ValueError, r"topk_group must be in \[1, n_group=8\], got 9"),
        (129, {}, ValueError, r"k must be at most topk_group \* \(num_experts / n_group\) = 128"),
        (
            8,
            {"correction_bias": np.empty(255, np.float32)},
            ValueError,
            r"correction_bias must have shape \[E\]",
        ),
        (
            8,
            {"correction_bias": np.empty((1, 256), np.float32)},
            ValueError,
            "correction_bias must have shape",
        ),
        (8, {"correction_bias": np.empty(256, np.int32)}, TypeError, "correction_bias must be a float array"),
        (8, {"method": "softmax"}, ValueError, "apply to method='sigmoid' only, not 'softmax'"),
        (
            8,
            {
                "method": "topk_softmax",
                "n_group": 1,
                "topk_group": 1,
                "correction_bias": np.empty(256, np.float32),
            },
            ValueError,
            "correction_bias, n_group and topk_group apply to method='sigmoid' only",
        ),
    ],
)
def test_router_option_errors(k, changes, error, match):
    with pytest.raises(error, match=match):
        _validate.check_route_method(changes.get("method", "sigmoid"))
        check_router(k, **changes)


def test_router_options_that_pass():
    check_router()  # DeepSeek-V3
    check_router(k=128)  # every expert of the 4 groups kept
    check_router(correction_bias=np.empty(256, np.float32))
    check_router(correction_bias=np.empty(256, BF16))  # converted on the GPU
    check_router(n_group=1, topk_group=1, scaling_factor=2.827)  # Kimi-K2
    check_router(n_group=MAX_GROUPS, topk_group=MAX_GROUPS, k=256)
    check_router(method="softmax", n_group=1, topk_group=1, scaling_factor=1)
    check_router(method="topk_softmax", n_group=1, topk_group=1, scaling_factor=np.float32(1.5))


def test_router_groups_need_two_experts_each():
    _validate.check_router(64, 2, "sigmoid", None, 32, 4, 1.0, max_groups=MAX_GROUPS)
    with pytest.raises(ValueError, match="leaves 1 expert per group; a group is scored by its two largest"):
        _validate.check_router(32, 2, "sigmoid", None, 32, 4, 1.0, max_groups=MAX_GROUPS)


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


@pytest.mark.parametrize(
    ("activation", "error", "match"),
    [
        ("gelu", ValueError, "activation kind must be one of"),
        (3, TypeError, "activation must be a str or moefuse.Activation"),
        (dict(kind="relu2", limit=7.0), ValueError, "relu2 takes no limit"),
        (dict(kind="swiglu", alpha=1.0), ValueError, "alpha is gpt_oss's parameter"),
        (dict(kind="swiglu", limit=-1.0), ValueError, "limit must be a finite number > 0"),
        (dict(kind="gpt_oss", alpha=float("nan")), ValueError, "alpha must be a finite number > 0"),
        (dict(kind="gpt_oss", limit=True), ValueError, "limit must be a finite number > 0"),
    ],
)
def test_activation_errors(activation, error, match):
    with pytest.raises(error, match=match):
        as_activation(Activation(**activation) if isinstance(activation, dict) else activation)


def test_activation_kernel_arguments_are_the_named_forms():
    """The one formula's parameters reproduce each form (against its textbook expression)."""
    g = np.linspace(-12.0, 12.0, 97)
    u = np.linspace(9.0, -9.0, 97)
    silu = g / (1 + np.exp(-g))
    assert np.allclose(Activation("swiglu").reference(g, u), silu * u)
    gc, uc = np.minimum(g, 7.0), np.clip(u, -7.0, 7.0)
    assert np.allclose(Activation("swiglu", limit=7.0).reference(g, u), gc / (1 + np.exp(-gc)) * uc)
    assert np.allclose(Activation("gpt_oss").reference(g, u), gc / (1 + np.exp(-1.702 * gc)) * (uc + 1))
    gelu = 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g**3)))
    assert np.allclose(Activation("gelu_tanh").reference(g, u), gelu * u)
    assert np.allclose(Activation("relu2").reference(None, u), np.maximum(u, 0) ** 2)
    assert as_activation("relu2") == Activation("relu2") and not Activation("relu2").gated


@pytest.mark.parametrize(
    ("layout", "w1_shape", "w2_shape", "b1_shape", "match"),
    [
        (WeightLayout(transposed=True), (E, H, 2 * INTER), (E, INTER, H), (E, 2 * INTER), None),
        (WeightLayout(gated=False), (E, INTER, H), (E, H, INTER), (E, INTER), None),
        (WeightLayout(gated=False, transposed=True), (E, H, INTER), (E, INTER, H), None, None),
        (WeightLayout(transposed=True), (E, 2 * INTER, H), (E, H, INTER), None, r"w2 must .* \[E, I, H\]"),
        (
            WeightLayout(transposed=True),
            (E, H, 2 * INTER),
            (E, H, INTER),
            None,
            r"w2 must have shape \[E, I, H\]",
        ),
        (
            WeightLayout(gated=False),
            (E, INTER, H),
            (E, H, INTER),
            (E, 2 * INTER),
            r"b1 must have shape \[E, I\]",
        ),
    ],
)
def test_weight_layouts(layout, w1_shape, w2_shape, b1_shape, match):
    w1, w2 = np.empty(w1_shape, BF16), np.empty(w2_shape, BF16)
    b1 = None if b1_shape is None else np.empty(b1_shape, BF16)
    if match is None:
        dims = _validate.check_expert_weights(w1, w2, b1, layout=layout)
        assert (dims.hidden, dims.intermediate, dims.layout) == (H, INTER, layout)
        return
    with pytest.raises(ValueError, match=match):
        _validate.check_expert_weights(w1, w2, b1, layout=layout)


def test_interleaved_needs_a_gate():
    with pytest.raises(ValueError, match="interleaved=True needs a gated activation"):
        WeightLayout(gated=False, interleaved=True)
    with pytest.raises(TypeError, match="transposed must be a bool"):
        WeightLayout(transposed="yes")


def test_a_layer_reads_its_own_weights_once_per_backend_and_copies_none_under_capture():
    """MoELayer._weights_for (no GPU: a layer's state set by hand, backends standing in): the
    backend's view is looked up once and kept; a backend that would read a copy of transposed
    weights refuses to make it under graph capture."""
    from types import SimpleNamespace

    from moefuse.layer import MoELayer

    layout = WeightLayout(transposed=True)
    layer = object.__new__(MoELayer)
    layer.dims = SimpleNamespace(layout=layout)
    layer.w1, layer.w2, layer._read_weights = object(), object(), {}
    calls = []

    def reads(name, read_as):
        return SimpleNamespace(name=name, reads=lambda seen: calls.append(name) or read_as)

    in_place = reads("sm90", layout)
    assert layer._weights_for(in_place, False) == (layer.w1, layer.w2, layout)
    assert layer._weights_for(in_place, True) is layer._read_weights["sm90"]
    assert calls == ["sm90"]
    copying = reads("sm80", WeightLayout())
    with pytest.raises(ValueError, match="w1 is transposed and the sm80 kernels read a copy"):
        layer._weights_for(copying, True)
    assert "sm80" not in layer._read_weights
