"""Every kernel compiles for every target through the same path as a GPU run, without a GPU."""

import shutil
import subprocess
from pathlib import Path

import pytest

import moefuse
from moefuse import _cache, _nvrtc, _sources
from tests.conftest import ARCHS

BUILDS = [(arch, module) for arch in ARCHS for module in _sources.modules_for(arch)]


@pytest.fixture(scope="module")
def ptxas_report(compiled):
    """Whether this NVRTC returns ptxas's `-v` report in the program log (13.5 does; the 13.0 of
    the GPU image returns an empty log). CI (env CI set) must have it: there it never skips."""
    import os

    if _nvrtc.parse_resources(compiled[("sm_90a", "permute")][1].log) or os.environ.get("CI"):
        return True
    pytest.skip(f"NVRTC {_nvrtc.nvrtc_version()} returns no ptxas report")


def cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import nvidia

    for root in nvidia.__path__:
        for candidate in Path(root).glob("cu*/bin/cuobjdump"):
            return str(candidate)
    return None


def test_every_module_builds_for_its_architectures():
    assert {m for _, m in BUILDS} == set(_sources.MODULES)
    assert ("sm_90a", "sm90_grouped_gemm_m128_bf16") in BUILDS
    assert ("sm_90a", "sm90_grouped_gemm_m64_f16") in BUILDS


@pytest.mark.parametrize("arch, module", BUILDS)
def test_module_compiles_without_spills(compiled, ptxas_report, arch, module):
    path, result = compiled[(arch, module)]
    assert path.is_file() and path.stat().st_size == len(result.cubin) > 0
    resources = _nvrtc.parse_resources(result.log)
    assert resources, f"no ptxas report for {module} on {arch}:\n{result.log}"
    for kernel, res in resources.items():
        assert res.spill_store_bytes == 0 and res.spill_load_bytes == 0, f"{kernel} spills on {arch}"
        assert res.stack_bytes == 0, f"{kernel} uses a stack frame on {arch}"
    # ptxas warnings that compile but cost speed: setmaxnreg ignored, wgmma serialised.
    for code in ("C7508", "C7509", "C7510", "C7519", "C7520"):
        assert code not in result.log, f"{module} on {arch}: ptxas warning {code}\n{result.log}"


def sass_functions(path) -> dict[str, str]:
    tool = cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not installed (pip install nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    sass = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    return {f.split()[0]: f for f in sass.split("Function : ")[1:]}


@pytest.mark.parametrize("arch", ARCHS)
def test_portable_gemm_kernels_use_tensor_cores(compiled, arch):
    functions = sass_functions(compiled[(arch, "sm80_grouped_gemm")][0])
    assert len(functions) == 20  # (gated, relu2, store, scatter into 16-bit and f32) x dtype x BM
    for name, sass in functions.items():
        assert "HMMA" in sass, f"{name} on {arch} has no tensor-core MMA"
        assert "LDSM" in sass, f"{name} on {arch} does not use ldmatrix"


ROW_MAJOR_MODULES = [
    m
    for m in _sources.modules_for("sm_90a")
    if m.startswith("sm90_grouped_gemm") and _sources.MODULE_TAGS[m].get("elem") != "e4m3"
]
FP8_MODULES = [
    m for m in _sources.modules_for("sm_90a") if _sources.MODULE_TAGS.get(m, {}).get("elem") == "e4m3"
]


@pytest.mark.parametrize("module", ROW_MAJOR_MODULES)
def test_hopper_row_major_kernels_use_wgmma_tma_and_setmaxnreg(compiled, specs, module):
    functions = sass_functions(compiled[("sm_90a", module)][0])
    published = {s.name: s for s in specs["sm_90a"] if s.module == module}
    assert set(functions) == set(published)
    for name, sass in functions.items():
        op = published[name].tags["op"]
        assert "HGMMA.64x" in sass, f"{name} has no warpgroup MMA"
        # B through its map: (k or n, feature, gate | up, expert) for gated halves, else 3-D
        b_map = "UTMALDG.4D" if op == "gemm1_gated" else "UTMALDG.3D"
        assert b_map in sass, f"{name} does not load B by its map"
        if op.startswith("gemm1"):  # x's rows gathered by cp.async, tracked by the stage's mbarrier
            assert "LDGSTS.E.BYPASS.128" in sass and "ARRIVES.LDGSTSBAR" in sass, name
            assert "FENCE.VIEW.ASYNC.S" in sass, f"{name}: no proxy fence before wgmma reads A"
        else:
            assert "UTMALDG.2D" in sass, f"{name} does not load h's rows by TMA"
        assert "USETMAXREG.DEALLOC" in sass and "USETMAXREG.TRY_ALLOC" in sass, name
        assert "WARPGROUP.ARRIVE" in sass
        assert "STL" not in sass and "LDL" not in sass, f"{name} uses local memory"
        wide = "REDG.E.ADD" if "scatter" in name else "STG.E.128"
        assert wide in sass, f"{name}: epilogue lost its 16-byte global operations"
        if "scatter" in name:
            assert ("F32x4" if name.endswith("f32") else "16x8") in sass, name


@pytest.mark.parametrize("module", FP8_MODULES)
def test_hopper_fp8_kernels_promote_e4m3_mmas_and_quantise_h(compiled, specs, module):
    """The fp8 row-major kernels (D30): e4m3
    wgmma only, 4 k32 MMAs per 128-deep K block (GEMM2: two promoted groups of 2, each waited
    for), TMA for B (and GEMM2's h and h_s), x_s beside x's gathered rows, h quantised in GEMM1."""
    functions = sass_functions(compiled[("sm_90a", module)][0])
    published = {s.name: s for s in specs["sm_90a"] if s.module == module}
    assert set(functions) == set(published)
    ops = sorted((s.tags["op"], s.tags["out"], s["tile_m"], s["tile_n"]) for s in published.values())
    assert ("gemm1_gated", "e4m3", 128, 128) in ops
    for tile_m in (128, 64):
        assert {(op, out) for op, out, m, _ in ops if m == tile_m and op.startswith("gemm2")} >= {
            ("gemm2_store", "bf16"),
            ("gemm2_store", "f16"),
            *(("gemm2_scatter", out) for out in ("bf16", "f16", "f32")),
        }
    for name, sass in functions.items():
        spec = published[name]
        assert spec.tags["elem"] == "e4m3" and spec["tile_k"] == 128, name
        wg_n = spec["tile_n"] if spec["tile_m"] == 128 else spec["tile_n"] // 2
        assert sass.count(f"QGMMA.64x{wg_n}x32.F32.E4M3.E4M3") == 4, f"{name}: not 4 k32 MMAs a block"
        assert "HGMMA" not in sass, name
        assert "USETMAXREG.DEALLOC" in sass and "USETMAXREG.TRY_ALLOC" in sass, name
        assert "STL" not in sass and "LDL" not in sass, f"{name} uses local memory"
        if spec.tags["op"] == "gemm1_gated":
            assert spec["a_scale_group"] == 128 and spec["scale_groups"] == 1, name
            assert "UTMALDG.4D" in sass and "LDGSTS.E.BYPASS.128" in sass, name
            assert "LDGSTS.E " in sass, f"{name}: x_s is not copied beside x's rows"
            assert "ARRIVES.LDGSTSBAR" in sass and "FENCE.VIEW.ASYNC.S" in sass, name
            assert "F2FP.SATFINITE.E4M3" in sass and "SHFL.BFLY" in sass, f"{name}: h not quantised"
            assert "STG.E.128" in sass, name
        else:
            assert spec["a_scale_group"] == 64 and spec["scale_groups"] == 2, name
            assert "UTMALDG.3D" in sass and sass.count("UTMALDG.2D") >= 2, f"{name}: h, h_s by TMA"
            assert sass.count("WARPGROUP.DEPBAR") == 2, f"{name}: not two promoted groups a block"
            assert ("REDG.E.ADD" if spec.tags["op"] == "gemm2_scatter" else "STG.E.128") in sass, name


def test_no_hopper_kernel_has_its_wgmma_serialised(compiled):
    """ptxas serialises every wgmma of a kernel (a note, not an error: C7514 and kin) where it
    cannot prove a non-wgmma instruction leaves the accumulators of MMAs in flight alone, as it did
    for the fp8 main loop with MMAs in flight over the loop's back edge (D30)."""
    for (arch, module), (_, result) in compiled.items():
        if arch == "sm_90a":
            assert "wgmma.mma_async instructions are serialized" not in result.log, module


@pytest.mark.parametrize("module", ["sm90_swapped", "sm90_swapped_wide"])
@pytest.mark.parametrize("tag", ["bf16", "f16"])
def test_swapped_hopper_kernels_use_every_mma_width_tma_and_setmaxnreg(compiled, specs, tag, module):
    functions = sass_functions(compiled[("sm_90a", f"{module}_{tag}")][0])
    assert len(functions) == 4  # GEMM1, GEMM2 store, GEMM2 scatter into 16-bit and f32 outputs
    for name, sass in functions.items():
        (spec,) = (s for s in specs["sm_90a"] if s.name == name)
        assert spec.tags["elem"] == tag and spec.tags["family"] == "swapped"
        widths = {f"HGMMA.64x{n}x16" for n in range(16, spec["max_rows"] + 1, 16)}
        assert all(width in sass for width in widths), f"{name} lacks an MMA width"
        assert "UTMALDG.2D" in sass, f"{name} has no TMA load"  # token rows (and w2)
        if "gemm1" in name:  # w1's gate/up groups as one 5-D box
            assert "UTMALDG.5D" in sass, name
        assert "USETMAXREG.DEALLOC" in sass and "USETMAXREG.TRY_ALLOC" in sass, name
        assert "STL" not in sass and "LDL" not in sass, f"{name} uses local memory"
        wide = "REDG.E.ADD" if "scatter" in name else "STG.E.128"
        assert wide in sass, f"{name}: epilogue lost its 16-byte global operations"


@pytest.mark.parametrize("arch", _sources.MODULE_ARCHS["quant"])
def test_fp8_quantiser_converts_in_hardware_with_ieee_division(compiled, specs, arch):
    functions = sass_functions(compiled[(arch, "quant")][0])
    found = {(s.tags["elem"], s.tags["group"]) for s in specs[arch] if s.module == "quant"}
    assert len(functions) == 4 and found == {(e, g) for e in ("bf16", "f16") for g in ("128", "row")}
    for name, sass in functions.items():
        assert "F2FP.SATFINITE.E4M3.F32.PACK_AB_MERGE_C" in sass, f"{name}: no e4m3 conversion"
        assert "SHFL.BFLY" in sass and "LDG.E.128" in sass and "STG.E.64" in sass, name
        assert "MUFU.RCP" in sass and "CALL" in sass, f"{name}: 448 / amax is not the IEEE division"
        assert "STL" not in sass and "LDL" not in sass, f"{name} uses local memory"


TEST_SOURCES = Path(__file__).parent / "cuda"


def test_e4m3_wgmma_assembles_to_qgmma_at_every_width_without_spills(tmp_path):
    """The fp8 module (D30, not launched yet) uses two widths only: tests/cuda/wgmma_e4m3.cu
    instantiates wgmma_m64nNk32<N, E4m3> for N = 16..256 over one 128-deep K block (4 k32 steps), so every run
    checks that the wrapper assembles, with no spills, to the QGMMA of its width."""
    result = _nvrtc.compile_cubin(
        TEST_SOURCES / "wgmma_e4m3.cu", "sm_90a", _sources.source_root(), "wgmma_e4m3"
    )
    resources = _nvrtc.parse_resources(result.log)
    for kernel, res in resources.items():  # empty where NVRTC gives no ptxas report (13.0)
        assert res.spill_store_bytes == res.spill_load_bytes == res.stack_bytes == 0, kernel
    assert "C75" not in result.log, result.log  # no serialised or fenced-in wgmma
    path = tmp_path / "wgmma_e4m3.cubin"
    path.write_bytes(result.cubin)
    functions = sass_functions(path)
    widths = range(16, 257, 16)
    assert set(functions) == {f"wgmma_e4m3_n{n}" for n in widths}
    assert "QGMMA.64x128x32.F32.E4M3.E4M3" in functions["wgmma_e4m3_n128"]
    for n in widths:
        sass = functions[f"wgmma_e4m3_n{n}"]
        assert sass.count(f"QGMMA.64x{n}x32.F32.E4M3.E4M3") == 4, f"n{n}: not 4 k32 e4m3 MMAs"
        assert "HGMMA" not in sass and "STL" not in sass and "LDL" not in sass, f"n{n}"


def test_cluster_probe_assembles_to_multicast_loads_and_remote_arrivals(tmp_path):
    """probes/cluster_probe.cu (TMA multicast across 2-CTA clusters, D30's next step; run by
    probes/cluster_probe.py on a GPU) builds its four streams on common/cluster.cuh's wrappers: the
    multicast ones load by UTMALDG.2D.MULTICAST and arrive on the partner's barrier, the single
    ones do neither; every one syncs the cluster, with no local memory."""
    source = Path(__file__).parents[1] / "probes" / "cluster_probe.cu"
    result = _nvrtc.compile_cubin(source, "sm_90a", _sources.source_root(), "cluster_probe")
    cubin = tmp_path / "cluster_probe.cubin"
    cubin.write_bytes(result.cubin)
    functions = {n: f for n, f in sass_functions(cubin).items() if n.startswith("stream_")}
    assert set(functions) == {
        f"stream_{form}{check}" for form in ("single", "multicast") for check in ("", "_check")
    }
    for name, sass in functions.items():
        multicast = "multicast" in name
        assert ("UTMALDG.2D.MULTICAST" in sass) == multicast, name
        assert ("SYNCS.ARRIVE.TRANS64.RED" in sass) == multicast, f"{name}: the remote arrival"
        assert "UCGABAR_ARV" in sass and "UCGABAR_WAIT" in sass, name
        assert "STL" not in sass and "LDL" not in sass, name


def test_compile_error_names_the_module_the_architecture_and_the_log(tmp_path):
    """A variant source that does not compile, chosen through moefuse.override as a tool would
    (under a source root of its own, so the checkout's sources and keys stay as they are)."""
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k() { undefined_thing(); }\n')
    with moefuse.override(sources={"permute": "broken.cu"}), pytest.raises(_nvrtc.CompileError) as error:
        _cache.compile_module("permute", "sm_90a", directory=tmp_path / "cache", root=tmp_path)
    message = str(error.value)
    assert "module permute" in message and "sm_90a" in message and "broken.cu" in message
    assert "undefined_thing" in message  # the compiler's log
    assert not (tmp_path / "cache").exists()  # nothing published


def test_kernel_name_dtype_tags():
    import ml_dtypes
    import numpy as np

    from moefuse.kernels import dtype_tag

    assert [dtype_tag(t) for t in (ml_dtypes.bfloat16, np.float16, np.float32)] == ["bf16", "f16", "f32"]
