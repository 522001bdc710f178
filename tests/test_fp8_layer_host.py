"""The fp8 layer's host wiring without a GPU (docs/DESIGN.md D30, S8): which weights take the fp8
path, the errors that name the argument, the workspace layout of an fp8 call kind, and the
strides the host passes for each scale format."""

from types import SimpleNamespace

import ml_dtypes
import numpy as np
import pytest

from moefuse import backends, layer
from moefuse._validate import STANDARD_LAYOUT, ExpertDims, WeightLayout
from moefuse.backends import CallKind, GemmArrays, Sm80, Sm90
from moefuse.fp8 import Fp8Format
from moefuse.layer import fp8_weights, is_fp8, require_fp8_backend, workspace_specs
from moefuse.plan import plan_capacity
from moefuse.workspace import layout_bytes
from tests.fake_tma import FakeTma

E, H, INTER = 4, 7168 + 64, 512  # H % 128 != 0: a partial last x scale group


def test_which_weights_take_the_fp8_path():
    bf16 = np.zeros((2, 4), ml_dtypes.bfloat16)
    assert not is_fp8(bf16)
    assert is_fp8(np.zeros((2, 4), ml_dtypes.float8_e4m3fn))
    assert is_fp8(np.zeros((2, 4), np.uint8))
    assert is_fp8(bf16, w1_scale=np.ones(2, np.float32))  # scales without fp8 weights: fp8 checks
    assert is_fp8(bf16, w2_scale=np.ones(2, np.float32))


@pytest.mark.parametrize(
    "layout, match",
    [
        (WeightLayout(gated=False), "activation: fp8 weights need a gated activation"),
        (WeightLayout(transposed=True), "transposed=True: fp8 weights must be K-major"),
    ],
)
def test_fp8_layouts_the_kernels_do_not_read_are_refused(layout, match):
    w = np.zeros((E, 2 * INTER, H), ml_dtypes.float8_e4m3fn)
    with pytest.raises(ValueError, match=match):
        fp8_weights(w, w, None, None, np.ones(E, np.float32), np.ones(E, np.float32), layout)


@pytest.mark.parametrize("backend", [Sm80(), Sm90()])
def test_fp8_needs_the_hopper_backend(backend):
    dims = ExpertDims(E, H, INTER, np.dtype(ml_dtypes.bfloat16), STANDARD_LAYOUT, Fp8Format("block"))
    if backend.fp8:
        require_fp8_backend(backend, dims)
    else:
        with pytest.raises(ValueError, match=r"w1: fp8 weights need Hopper \(sm_90a"):
            require_fp8_backend(backend, dims)
    require_fp8_backend(backend, ExpertDims(E, H, INTER, np.dtype(ml_dtypes.bfloat16)))  # 16-bit: any


@pytest.fixture
def fake_hopper(fake_gpu):
    fake_gpu("sm_90a")


@pytest.mark.parametrize("kind", ["block", "tensor"])
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("num_tokens", [1, 37, 300])
def test_fp8_workspace_layout(fake_hopper, kind, fused, num_tokens):
    """x_q [T, H] u8, x_s [T, ceil(H/128)] (per tensor [T, 1]) f32, h [rows, I] u8, h_s
    [ceil(I/64), rows] f32 (MN-major, 16-byte rows for its TMA map), y in x's dtype when stored."""
    dtype = np.dtype(ml_dtypes.bfloat16)
    dims = ExpertDims(E, H, INTER, dtype, STANDARD_LAYOUT, Fp8Format(kind))
    config = layer.configure(Sm90(), dims, num_tokens, 2, fused, dtype)
    specs = {s.name: s for s in workspace_specs(dims, num_tokens, 2, config)}
    rows = plan_capacity(num_tokens, 2, E, config.tile_m).rows
    u8, f32 = np.dtype(np.uint8), np.dtype(np.float32)
    assert (specs["x_q"].shape, specs["x_q"].dtype) == ((num_tokens, H), u8)
    assert (specs["x_s"].shape, specs["x_s"].dtype) == (
        (num_tokens, -(-H // 128) if kind == "block" else 1),
        f32,
    )
    assert (specs["h"].shape, specs["h"].dtype) == ((rows, INTER), u8)
    assert (specs["h_s"].shape, specs["h_s"].dtype) == ((INTER // 64, rows), f32)
    assert rows * 4 % 16 == 0
    assert "x_perm" not in specs
    assert ("y" in specs) == (not fused) and (
        fused or (specs["y"].shape == (rows, H) and specs["y"].dtype == dtype)
    )
    bf16_dims = ExpertDims(E, H, INTER, dtype)
    bf16_specs = workspace_specs(bf16_dims, num_tokens, 2, config)
    # fp8 replaces the 2-byte h by 1-byte h plus x's and h's quantised copies and scales
    extra = num_tokens * H + specs["x_s"].nbytes + specs["h_s"].nbytes - rows * INTER
    assert abs(layout_bytes(list(specs.values())) - layout_bytes(bf16_specs) - extra) <= 3 * 256


def test_fp8_layer_workspace_bytes_refuses_sm80(monkeypatch):
    monkeypatch.setattr(layer, "require_gpu", lambda: 0)
    monkeypatch.setattr(backends, "for_device", lambda device_id: Sm80())
    dims = ExpertDims(E, H, INTER, np.dtype(ml_dtypes.bfloat16), STANDARD_LAYOUT, Fp8Format("block"))
    with pytest.raises(ValueError, match="fp8 weights need Hopper"):
        layer.workspace_bytes(dims, 16, 2, True, None)


def _arrays(spec, kind: str) -> GemmArrays:
    array = np.zeros(16, dtype=np.uint8)
    names = ("expert_counts", "expert_offsets", "tile_expert", "permuted_to_expanded")
    plan = SimpleNamespace(**dict.fromkeys(names, array))
    rows, tokens = 256, 37
    w_scale = np.zeros((E, 8, 57) if kind == "block" else (E, 1, 1), np.float32)
    x_scale = np.zeros((tokens, 57 if kind == "block" else 1), np.float32)
    h_scale = np.zeros((INTER // 64, rows), np.float32)
    a_scale = x_scale if spec.tags["op"].startswith("gemm1") else h_scale
    gate = backends.gate_args(STANDARD_LAYOUT, layer.as_activation("swiglu"), INTER)
    gate = gate if spec.tags["op"].startswith("gemm1") else {}
    return GemmArrays(
        array,
        array,
        None,
        plan,
        array,
        array,
        array,
        gate=gate,
        a_scale=a_scale,
        w_scale=w_scale,
        h_scale=h_scale,
    )


@pytest.mark.parametrize("kind", ["block", "tensor"])
def test_fp8_scale_strides_per_format(specs, kind):
    """Block scales by element strides; per-tensor ones (and per-token x_s) with stride 0 on the
    axes of one entry; GEMM1's h_s rows and GEMM2's h_s map as the kernels read them."""
    fp8 = [s for s in specs["sm_90a"] if s.tags.get("elem") == "e4m3" and s.tags.get("family") == "rows"]
    assert fp8
    for spec in fp8:
        args = Sm90.arrays(spec, _arrays(spec, kind), tma=FakeTma)
        blocks = kind == "block"
        assert (args["w_scale_expert"], args["w_scale_rows"], args["w_scale_k"]) == (
            (8 * 57, 57, 1) if blocks else (1, 0, 0)
        )
        if spec.tags["op"].startswith("gemm1"):
            assert (args["x_scale_row"], args["x_scale_k"]) == ((57, 1) if blocks else (1, 0))
            assert args["h_scale_rows"] == 256
            assert args["b_desc"][2] is True  # gate and up halves
        else:
            assert args["a_scale_desc"] == ("scale", (INTER // 64, 256), spec["tile_m"], spec["scale_groups"])
            assert args["a_desc"] == ("tile", spec["a_box_rows"], 128)


def test_fp8_call_kind_tags():
    kind = CallKind(16, 2, E, H, INTER, "f16", "f32", True, weights="e4m3")
    assert (kind.kernel_elem, kind.h_elem) == ("e4m3", "e4m3")
    plain = CallKind(16, 2, E, H, INTER, "f16", "f32", True)
    assert (plain.kernel_elem, plain.h_elem) == ("f16", "f16")
    queries = Sm90().queries(kind)
    assert all(q.get("family") in ("rows", None) for q in queries)
    assert dict(op="quantize_rows", elem="f16") in queries
    assert {q["out"] for q in queries if q.get("op") == "gemm1_gated"} == {"e4m3"}
