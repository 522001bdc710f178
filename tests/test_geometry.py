"""The host's launch geometry mirrors the constants of the CUDA sources it launches (no GPU)."""

import re

from moefuse import _sources, _validate, heuristics, kernels
from moefuse.backends import Sm80, Sm90


def cuda_source(module: str) -> str:
    return (_sources.source_root() / _sources.MODULES[module]).read_text()


def cuda_constants(source: str) -> dict[str, int]:
    """`constexpr int NAME = <integer arithmetic>;` definitions of a CUDA source."""
    found = re.findall(r"constexpr int (\w+) = ([\d +*()]+);", source)
    return {name: eval(value, {"__builtins__": {}}) for name, value in found}


def test_routing_geometry():
    c = cuda_constants(cuda_source("routing"))
    assert (
        c["PLAN_CHUNK"],
        c["SCAN_THREADS"],
        c["TOPK_WARPS"],
    ) == (kernels.PLAN_CHUNK, kernels.SCAN_THREADS, kernels.TOPK_WARPS)
    assert c["PLAN_BLOCK_THREADS"] == kernels.PLAN_BLOCK_THREADS
    assert c["PLAN_BLOCK_PASSES"] * c["PLAN_BLOCK_THREADS"] == kernels.PLAN_BLOCK_ENTRIES
    assert c["PLAN_BLOCK_EXPERTS"] == kernels.PLAN_BLOCK_EXPERTS
    assert c["PLAN_CHUNK"] >= kernels.PLAN_SMALL_ENTRIES  # plan_small ranks one chunk


def test_permute_geometry():
    c = cuda_constants(cuda_source("permute"))
    assert (c["FINALIZE_THREADS"], c["GATHER_WARPS"]) == (kernels.FINALIZE_THREADS, kernels.GATHER_WARPS)


def test_portable_gemm_geometry():
    c = cuda_constants(cuda_source("sm80_grouped_gemm"))
    assert (c["BN"], c["BK"], c["STAGES"], c["THREADS"]) == (Sm80.BN, Sm80.BK, Sm80.STAGES, Sm80.THREADS)


def test_every_backend_runs_every_tile_m_a_plan_may_have():
    assert Sm80.TILE_M == Sm90.TILE_M == _validate.TILE_M_CHOICES


def test_hopper_gemm_geometry():
    source = (_sources.source_root() / "sm90" / "grouped_gemm.cuh").read_text()
    c = cuda_constants(source)
    for tile_m in Sm90.TILE_M:
        entries = cuda_source(f"sm90_grouped_gemm_m{tile_m}")
        found = re.findall(r"^MOEFUSE_SM90_ENTRIES\((\w+), \w+, (\d+), (\d+), (\d+)\)", entries, flags=re.M)
        for tag in ("bf16", "f16"):
            stages = {(int(bm), int(bn)): int(s) for t, bm, bn, s in found if t == tag}
            assert stages == {key: s for key, s in Sm90.STAGES.items() if key[0] == tile_m}
    assert (c["BK"], c["THREADS"]) == (Sm90.BK, Sm90.THREADS)
    assert 2 * 64 * c["STAGING_PITCH"] == Sm90.STAGING_BYTES


def test_swapped_hopper_gemm_geometry():
    c = cuda_constants((_sources.source_root() / "sm90" / "swapped.cuh").read_text())
    assert (c["TOKEN_BOX"], c["STAGING_BYTES"], c["MAX_EXPERTS"]) == (
        Sm90.SWAPPED_TOKEN_BOX,
        Sm90.SWAPPED_STAGING_BYTES,
        heuristics.SWAPPED_MAX_EXPERTS,
    )
    for prefix, tiles in (("NARROW", heuristics.SWAPPED_NARROW), ("WIDE", heuristics.SWAPPED_WIDE)):
        kernel = (c[f"{prefix}_BW"], c[f"{prefix}_MAX_ROWS"], c[f"{prefix}_STAGES"])
        assert kernel == (tiles.weight_rows, tiles.max_rows, tiles.stages)
        assert Sm90().swapped_smem_bytes(tiles) <= 232448  # the kernel's static_assert, mirrored
        assert f"{tiles.module}_bf16" in _sources.MODULES and f"{tiles.module}_f16" in _sources.MODULES
