"""Every kernel's published launch contract, read from the compiled cubins (no GPU), and the host's
arguments against it: the host types no number the kernels define, and passes what they declare."""

from types import SimpleNamespace

import numpy as np
import pytest

from moefuse import _sources, _spec, _validate
from moefuse._validate import STANDARD_LAYOUT
from moefuse.activation import Activation
from moefuse.backends import GemmArrays, Sm80, Sm90, gate_args
from tests.conftest import ARCHS

SMEM_PER_BLOCK = 227 * 1024  # sm_80 (163 KiB) and newer take less or as much: an upper bound


def test_every_kernel_publishes_its_contract(compiled):
    for (arch, module), (path, _) in compiled.items():
        cubin = path.read_bytes()
        symbols = _spec._symbols(cubin).items()
        kernels = {name for name, (kind, _) in symbols if kind == 2 and "__" not in name}
        assert kernels, (arch, module)
        assert set(_spec.read_specs(cubin, module)) == kernels, (arch, module)


@pytest.mark.parametrize("arch", ARCHS)
def test_contracts_are_complete(specs, arch):
    for spec in specs[arch]:
        assert 32 <= spec.threads <= 1024 and spec.threads % 32 == 0, spec.name
        assert 0 <= spec.smem_bytes <= SMEM_PER_BLOCK, spec.name
        assert "op" in spec.tags, spec.name
        assert len({p.name for p in spec.params}) == len(spec.params), spec.name
        if spec.tags.get("family") in ("rows", "swapped", "sm80"):
            assert spec.tags["elem"] in ("bf16", "f16") and spec.tags["out"] in ("bf16", "f16", "f32")


def test_each_kernel_choice_is_unique(specs):
    """The host finds kernels by tags and numbers: no two may answer the same description."""
    for arch, found in specs.items():
        keys = [(tuple(sorted(s.tags.items())), s.ints.get("tile_m"), s.ints.get("tile_n")) for s in found]
        assert len(keys) == len(set(keys)), arch


@pytest.mark.parametrize("arch", ARCHS)
def test_every_router_reads_every_logit_dtype(specs, arch):
    """route looks its kernel up by method and logits dtype; the CPU tests of its n_group limit
    use the number the kernels publish."""
    from tests.test_validate import MAX_GROUPS

    routers = [s for s in specs[arch] if s.tags["op"] == "route"]
    found = {(s.tags["method"], s.tags["logits"]) for s in routers}
    assert found == {(m, t) for m in _validate.ROUTE_METHODS for t in ("f32", "bf16", "f16")}
    assert {s["max_groups"] for s in routers} == {MAX_GROUPS}
    assert all(s.threads == 32 * s["tokens_per_block"] for s in routers)  # a warp per token


def test_the_same_kernels_on_every_architecture_they_build_for(specs):
    portable = {s.name for s in specs["sm_80"]}
    assert portable <= {s.name for s in specs["sm_90a"]} and portable <= {s.name for s in specs["sm_100a"]}
    assert any(s.tags.get("family") == "rows" for s in specs["sm_90a"])
    assert not any(s.tags.get("family") in ("rows", "swapped") for s in specs["sm_100a"])


class FakeTma:
    """Stands in for moefuse._tma (which needs a driver): records the boxes asked for."""

    @staticmethod
    def tile_desc(matrix, box_rows, box_cols):
        return ("tile", box_rows, box_cols)

    @staticmethod
    def gate_up_groups_desc(w1, groups, group, box_cols, interleaved):
        return ("gate_up", groups, group, box_cols)

    @staticmethod
    def weights_desc(w, spec, layout):
        return ("weights", spec["b_box_rows"], spec["tile_k"])


def fake_gemm(spec) -> GemmArrays:
    """A GEMM's arrays for `spec`, with the activation arguments when it is a gated GEMM1."""
    array = np.zeros(16, dtype=np.uint8)
    names = ("expert_counts", "expert_offsets", "tile_expert", "permuted_to_expanded")
    plan = SimpleNamespace(**dict.fromkeys(names, array))
    gated = spec.tags["op"].startswith("gemm1_gated")
    gate = gate_args(STANDARD_LAYOUT, Activation(), 8) if gated else {}
    return GemmArrays(array, array, None, plan, array, topk_weights=array, zero=array, gate=gate)


# The arguments a ForwardConfig fixes per family (backends.Sm80._launch, Sm90._rows, Sm90._swapped).
FIXED = {
    "sm80": {"K", "N", "top_k"},
    "rows": {"num_local_experts", "K", "N", "top_k", "k_splits"},
    "swapped": {"num_local_experts", "K", "N", "top_k", "busiest_guard"},
}


@pytest.mark.parametrize("arch", ARCHS)
def test_host_passes_exactly_the_gemm_parameters(specs, arch):
    for spec in specs[arch]:
        family = spec.tags.get("family")
        if family not in FIXED:
            continue
        backend = Sm80 if family == "sm80" else Sm90
        args = backend.arrays(spec, fake_gemm(spec), tma=FakeTma)
        assert not FIXED[family] & set(args)
        spec.check_names({*args, *FIXED[family]})
        packed = spec.pack({**args, **dict.fromkeys(FIXED[family], 1)})
        assert len(packed) == len(spec.params)


def test_sm90_descriptors_take_the_published_boxes(specs):
    found = {"gate_up": 0, "tile": 0, "weights": 0}
    for spec in specs["sm_90a"]:
        if spec.tags.get("family") not in ("rows", "swapped"):
            continue
        args = Sm90.arrays(spec, fake_gemm(spec), tma=FakeTma)
        descs = [v for v in args.values() if isinstance(v, tuple)]
        assert all(d[-1] == spec["tile_k"] for d in descs), spec.name
        for d in descs:
            found[d[0]] += 1
    assert all(found.values()), found


def test_variant_modules_hold_only_their_kernels(specs):
    """A variant module compiles only when a query names its tags (_sources.VARIANT_TAGS): each
    of its kernels carries them, so no query that omits them could have wanted it."""
    for spec in specs["sm_90a"]:
        wanted = _sources.VARIANT_TAGS.get(spec.module, {})
        assert all(spec.tags.get(k) == v for k, v in wanted.items()), spec.name
        assert spec.module in _sources.modules_needed("sm_90a", spec.tags), spec.name
    assert not set(_sources.VARIANT_TAGS) & set(_sources.modules_needed("sm_90a", {}))


def test_parameter_lists_parse_into_host_conversions():
    params = _spec.parse_params(
        "(const Bf16* __restrict__ x, const __grid_constant__ TmaDesc d, int K, i64 n, float s)"
    )
    assert [(p.name, p.kind) for p in params] == [
        ("x", "ptr"),
        ("d", "tma"),
        ("K", "i32"),
        ("n", "i64"),
        ("s", "f32"),
    ]
    with pytest.raises(_spec.SpecError, match="no host conversion"):
        _spec.parse_params("(double d)")


def test_packing_is_by_name_and_fails_loudly():
    params = _spec.parse_params("(int* out, int n, i64 b)")
    spec = _spec.KernelSpec("m", "m.cu", "k", {}, {"threads": 32}, params)
    assert spec.pack({"n": 3, "b": 5, "out": None}) == (_spec.NULL, np.int32(3), np.int64(5))
    assert isinstance(spec.pack({"n": 3, "b": 5, "out": None})[2], np.int64)
    with pytest.raises(_spec.SpecError, match=r"missing \['b'\], unknown \['c'\]"):
        spec.pack({"n": 3, "c": 5, "out": None})
    with pytest.raises(_spec.SpecError, match="publishes no 'tile_m'"):
        spec["tile_m"]
