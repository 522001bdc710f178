"""Every kernel's published launch contract, read from the compiled cubins (no GPU), and the host's
arguments against it: the host types no number the kernels define, and passes what they declare."""

from types import SimpleNamespace

import numpy as np
import pytest

from moefuse import _sources, _spec, _validate, kernels
from moefuse._validate import STANDARD_LAYOUT, WeightLayout
from moefuse.activation import Activation
from moefuse.backends import CallKind, GemmArrays, Sm80, Sm90, gate_args
from tests.conftest import ARCHS
from tests.fake_tma import FakeTma

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
        if spec.tags.get("family") in ("rows", "swapped", "sm80") and spec.tags["elem"] != "e4m3":
            assert spec.tags["elem"] in ("bf16", "f16") and spec.tags["out"] in ("bf16", "f16", "f32")
        elif spec.tags.get("family"):  # fp8 (D30): h is e4m3, GEMM2 writes the 16-bit or f32 types
            assert spec.tags["family"] == "rows" and spec.tags["out"] in ("e4m3", "bf16", "f16", "f32")


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


def fake_gemm(spec) -> GemmArrays:
    """A GEMM's arrays for `spec`, with the activation arguments when it is a gated GEMM1."""
    array = np.zeros(16, dtype=np.uint8)
    names = ("expert_counts", "expert_offsets", "tile_expert", "permuted_to_expanded")
    plan = SimpleNamespace(**dict.fromkeys(names, array))
    gated = spec.tags["op"].startswith("gemm1_gated")
    gate = gate_args(STANDARD_LAYOUT, Activation(), 8) if gated else {}
    scales = {}
    if spec.tags["elem"] == "e4m3":  # x_s / h_s, w_scale [E, blocks, blocks], GEMM1's h_s
        scale = np.zeros((2, 3), dtype=np.float32)
        scales = dict(a_scale=scale, w_scale=np.zeros((2, 3, 4), np.float32), h_scale=scale)
    return GemmArrays(array, array, None, plan, array, topk_weights=array, zero=array, gate=gate, **scales)


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
    found = {"gate_up": 0, "tile": 0, "weights": 0, "scale": 0}
    for spec in specs["sm_90a"]:
        if spec.tags.get("family") not in ("rows", "swapped"):
            continue
        args = Sm90.arrays(spec, fake_gemm(spec), tma=FakeTma)
        descs = [v for v in args.values() if isinstance(v, tuple) and v[0] != "scale"]
        assert all(d[-1] == spec["tile_k"] for d in descs), spec.name
        if "a_scale_desc" in args:  # fp8 GEMM2: h_s's box is the tile's rows x a K block's groups
            box = (fake_gemm(spec).a_scale.shape, spec["tile_m"], spec["scale_groups"])
            assert args["a_scale_desc"] == ("scale", *box), spec.name
            found["scale"] += 1
        for d in descs:
            found[d[0]] += 1
    assert all(found.values()), found


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_carries_its_modules_tags(specs, arch):
    """A query reads a GEMM module only if it names the module's tags (_sources.MODULE_TAGS): each
    of its kernels carries them, so no query that omits one could have wanted the module."""
    assert set(_sources.MODULES) - set(_sources.MODULE_TAGS) == {"routing", "permute"}
    for spec in specs[arch]:
        assert spec.matches(_sources.MODULE_TAGS.get(spec.module, {})), spec.name


# The fp8 kernels' parameters beyond the 16-bit ones' (D30): what S8's host wiring must pass.
FP8_SCALE_PARAMS = {"w_scale", "w_scale_rows", "w_scale_k", "w_scale_expert"}
FP8_A_PARAMS = {
    "gemm1_gated": {"x", "x_scale", "x_scale_row", "x_scale_k", "h_scale", "h_scale_rows"},
    "gemm2_store": {"a_desc", "a_scale_desc"},
    "gemm2_scatter": {"a_desc", "a_scale_desc"},
}


def test_fp8_kernels_declare_their_scales_and_no_16_bit_query_reads_them(specs):
    fp8 = [s for s in specs["sm_90a"] if s.tags.get("elem") == "e4m3" and s.tags.get("family")]
    assert fp8 and {s.module for s in fp8} == {"sm90_grouped_gemm_fp8"}
    for spec in fp8:
        names = {p.name for p in spec.params}
        assert FP8_SCALE_PARAMS | FP8_A_PARAMS[spec.tags["op"]] <= names, spec.name
        assert {p.kind for p in spec.params if p.name in FP8_SCALE_PARAMS} == {"ptr", "i32"}, spec.name
        assert (
            spec["smem_bytes"]
            == spec["scale_slot_bytes"] * spec["stages"]
            + (spec["tile_m"] + spec["tile_n"]) * 128 * spec["stages"]
            + 2 * 64 * 144
            + 16 * spec["stages"]
        ), spec.name
    for backend, arch, layout, _ in PREPARED:
        for elem in ("bf16", "f16"):
            kind = CallKind(16, 4, 8, 1024, 512, elem, elem, True, backend.reads(layout))
            assert "sm90_grouped_gemm_fp8" not in _sources.modules_needed(arch, *backend.queries(kind))


def test_routing_reads_only_the_modules_every_call_reads():
    """`moefuse.route`'s query compiles routing and permute (~2 s), no GEMM."""
    for arch in ARCHS:
        query = dict(op="route", method="softmax", logits="f32")
        assert _sources.modules_needed(arch, query) == ["routing", "permute"]


@pytest.mark.parametrize("arch", _sources.MODULE_ARCHS["quant"])
def test_quantize_rows_finds_its_kernel_in_the_quant_module_alone(fake_gpu, arch):
    """kernels.quantize_rows' query (op=quantize_rows) reads the quant module and no GEMM, and
    finds one kernel per element type and group; no other query reads quant."""
    read = fake_gpu(arch)
    for elem in ("bf16", "f16"):
        for group in ("128", "row"):
            spec = kernels.kernel(op="quantize_rows", elem=elem, group=group)
            assert spec.module == "quant" and spec.tags["elem"] == elem and spec.tags["group"] == group
    assert all(modules == {*EVERY_CALL, "quant"} for modules in read)
    for backend, kind in ((Sm80(), call_kind(STANDARD_LAYOUT)), (Sm90(), call_kind(STANDARD_LAYOUT))):
        assert "quant" not in _sources.modules_needed(arch, *backend.queries(kind))


GPT_OSS = WeightLayout(transposed=True, interleaved=True)
EVERY_CALL = ["routing", "permute"]
# What a call kind prepares (compiles in one pass where missing) for its weights' layout and bf16.
PREPARED = [
    (Sm80(), "sm_80", STANDARD_LAYOUT, ["sm80_grouped_gemm"]),
    (Sm80(), "sm_90a", WeightLayout(gated=False), ["sm80_grouped_gemm"]),
    (
        Sm90(),
        "sm_90a",
        STANDARD_LAYOUT,  # Mixtral, Qwen3, DeepSeek-V3
        [
            "sm90_grouped_gemm_m128_bf16",
            "sm90_grouped_gemm_m64_bf16",
            "sm90_swapped_bf16",
            "sm90_swapped_wide_bf16",
        ],
    ),
    (
        Sm90(),
        "sm_90a",
        WeightLayout(gated=False),
        ["sm90_grouped_gemm_m128_bf16", "sm90_grouped_gemm_m64_bf16", "sm90_grouped_gemm_relu2"],
    ),
    (
        Sm90(),
        "sm_90a",
        GPT_OSS,
        [
            "sm90_grouped_gemm_mn_pairs_bf16",
            "sm90_grouped_gemm_mn_gemm2_bf16",
            "sm90_swapped_mn_bf16",
            "sm90_swapped_wide_mn_bf16",
        ],
    ),
    (
        Sm90(),
        "sm_90a",
        WeightLayout(transposed=True),
        ["sm90_grouped_gemm_mn_gated_bf16", "sm90_grouped_gemm_mn_gemm2_bf16"],
    ),
]


def call_kind(layout, num_tokens=16, fused=True, out="bf16") -> CallKind:
    return CallKind(num_tokens, 4, 8, 1024, 512, "bf16", out, fused, layout)


@pytest.mark.parametrize("backend, arch, layout, modules", PREPARED)
def test_a_call_kind_prepares_only_the_modules_its_weights_may_use(backend, arch, layout, modules):
    for fused, out in ((True, "bf16"), (True, "f32"), (False, "bf16")):
        kind = call_kind(backend.reads(layout), fused=fused, out=out)
        assert _sources.modules_needed(arch, *backend.queries(kind)) == EVERY_CALL + modules


@pytest.mark.parametrize("backend, arch, layout, modules", PREPARED)
def test_configure_at_any_batch_size_reads_only_the_prepared_modules(
    fake_gpu, backend, arch, layout, modules
):
    """On a fake GPU: the first catalog read of a call kind (the prepare) holds every module that
    its configuration, or another T's, reads later, so a later call compiles nothing."""
    read = fake_gpu(arch)
    families = set()
    for num_tokens in (1, 16, 64, 256, 512, 4096, 16384):
        for fused in (True, False):
            config = backend.configure(call_kind(backend.reads(layout), num_tokens, fused))
            families |= {launch.spec.tags["family"] for launch in config.gemm1 + config.gemm2}
    assert read[0] == set(EVERY_CALL + modules)
    assert all(later <= read[0] for later in read)
    assert families == {tags["family"] for tags in backend.families(backend.reads(layout))}


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


FP8_KIND = dict(num_local_experts=8, hidden=1024, inter=512, elem="bf16", weights="e4m3")


@pytest.mark.parametrize("out", ["bf16", "f32"])
def test_fp8_call_kinds_prepare_the_fp8_and_quant_modules_and_configure_rows_only(fake_gpu, out):
    """On a fake Hopper GPU (D30, S8): an fp8 kind's prepare reads the fp8 GEMMs and the quantiser
    (no 16-bit GEMM, no swapped family), and its configuration at any T picks e4m3 kernels of
    those modules only: GEMM1 writes e4m3 h, GEMM2 stores x's dtype or scatters into `out`."""
    read = fake_gpu("sm_90a")
    for num_tokens in (1, 37, 300, 4096, 16384):
        for fused in (True, False):
            kind = CallKind(num_tokens, 4, **FP8_KIND, out=out if fused else "bf16", fused=fused)
            config = Sm90().configure(kind)
            assert not config.permutes_x and config.clears_out == fused
            (gemm1,), (gemm2,) = config.gemm1, config.gemm2
            assert (
                gemm1.spec.tags == dict(family="rows", op="gemm1_gated", elem="e4m3", out="e4m3", w="k")
                and gemm1.spec["tile_m"] == config.tile_m
            )
            op2 = "gemm2_scatter" if fused else "gemm2_store"
            assert gemm2.spec.tags["op"] == op2 and gemm2.spec.tags["elem"] == "e4m3"
            assert gemm2.spec.tags["out"] == (out if fused else "bf16")
            assert gemm2.spec["tile_m"] == config.tile_m and gemm2.spec["tile_k"] == 128
    assert read[0] == set(EVERY_CALL) | {"sm90_grouped_gemm_fp8", "quant"}
    assert all(later <= read[0] for later in read)
