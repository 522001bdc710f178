"""Every kernel compiles for every target through the same path as a GPU run, without a GPU."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from moefuse import _cache, _nvrtc, _sources

ARCHS = ("sm_80", "sm_90a", "sm_100a")


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(arch, module) -> (cubin path, compile result), all compiled once into a fresh folder."""
    out = tmp_path_factory.mktemp("cubins")
    return {
        (arch, module): _cache.compile_module(module, arch, directory=out)
        for arch in ARCHS
        for module in _sources.MODULES
    }


def cuobjdump() -> str | None:
    found = shutil.which("cuobjdump")
    if found:
        return found
    import nvidia

    for root in nvidia.__path__:
        for candidate in Path(root).glob("cu*/bin/cuobjdump"):
            return str(candidate)
    return None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("module", list(_sources.MODULES))
def test_module_compiles_without_spills(compiled, arch, module):
    path, result = compiled[(arch, module)]
    assert path.is_file() and path.stat().st_size == len(result.cubin) > 0
    resources = _nvrtc.parse_resources(result.log)
    assert resources, f"no ptxas report for {module} on {arch}:\n{result.log}"
    for kernel, res in resources.items():
        assert res.spill_store_bytes == 0 and res.spill_load_bytes == 0, f"{kernel} spills on {arch}"
        assert res.stack_bytes == 0, f"{kernel} uses a stack frame on {arch}"


@pytest.mark.parametrize("arch", ARCHS)
def test_gemm_kernels_use_tensor_cores(compiled, arch):
    tool = cuobjdump()
    if tool is None:
        pytest.skip("cuobjdump not installed (pip install nvidia-cuda-cuobjdump)")
    path, _ = compiled[(arch, "sm80_grouped_gemm")]
    sass = subprocess.run([tool, "-sass", str(path)], capture_output=True, text=True, check=True).stdout
    functions = sass.split("Function : ")[1:]
    assert len(functions) == 16
    for function in functions:
        name = function.split()[0]
        assert "HMMA" in function, f"{name} on {arch} has no tensor-core MMA"
        assert "LDSM" in function, f"{name} on {arch} does not use ldmatrix"


def test_every_entry_point_the_host_launches_exists(compiled):
    from moefuse import kernels

    names = set()
    for module in _sources.MODULES:
        names |= set(_nvrtc.parse_resources(compiled[("sm_90a", module)][1].log))
    for tag in ("bf16", "f16"):
        for tile_m in kernels.GEMM_TILE_M:
            for name in (
                f"gemm1_swiglu_{tag}_m{tile_m}",
                f"gemm2_store_{tag}_m{tile_m}",
                f"gemm2_scatter_{tag}_m{tile_m}_out_{tag}",
                f"gemm2_scatter_{tag}_m{tile_m}_out_f32",
            ):
                assert name in names
        assert f"finalize_{tag}_out_{tag}" in names and f"finalize_{tag}_out_f32" in names
    assert {
        "topk_softmax",
        "plan_rank_i32",
        "plan_rank_i64",
        "plan_scan_chunks",
        "plan_expert_offsets",
        "plan_scatter_i32",
        "plan_scatter_i64",
    } <= names


def test_cache_key_covers_every_source_byte(tmp_path):
    root = tmp_path / "cuda_src"
    shutil.copytree(_sources.source_root(), root)
    keys = {module: _cache.cache_key(module, "sm_90a", root) for module in _sources.MODULES}
    assert len(set(keys.values())) == len(keys)
    assert _cache.cache_key("routing", "sm_80", root) != keys["routing"]
    header = root / "common" / "ptx.cuh"
    header.write_bytes(header.read_bytes() + b"\n")  # a header every module includes
    for module, key in keys.items():
        assert _cache.cache_key(module, "sm_90a", root) != key


def test_cache_hit_compiles_nothing_and_publishes_atomically(tmp_path, monkeypatch):
    calls = []
    real = _nvrtc.compile_cubin
    monkeypatch.setattr(_nvrtc, "compile_cubin", lambda *a, **k: calls.append(a) or real(*a, **k))
    monkeypatch.setenv(_cache.CACHE_ENV, str(tmp_path))
    first, result = _cache.compile_module("finalize", "sm_90a")
    second, again = _cache.compile_module("finalize", "sm_90a")
    assert first == second and first.parent == tmp_path
    assert result is not None and again is None and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left


def test_compile_error_carries_the_log(tmp_path):
    bad = tmp_path / "bad.cu"
    bad.write_text('extern "C" __global__ void k() { undefined_thing(); }\n')
    with pytest.raises(_nvrtc.CompileError, match="undefined_thing"):
        _nvrtc.compile_cubin(bad, "sm_90a", include_dir=tmp_path)


def test_precompile_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "moefuse.precompile", "--arch", "sm_90a", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "gemm1_swiglu_bf16_m128" in proc.stdout and "0 spill registers" in proc.stdout
    assert len(list(tmp_path.glob("*.cubin"))) == len(_sources.MODULES)
