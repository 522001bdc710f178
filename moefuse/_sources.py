"""Where the CUDA sources live and what the compiled modules are made of."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from functools import cache
from pathlib import Path

from . import overrides

# Module name -> source file under the source root. One cubin per (module, architecture).
MODULES: dict[str, str] = {
    "routing": "routing.cu",
    "permute": "permute.cu",
    "quant": "quant.cu",
    "sm80_grouped_gemm": "sm80/grouped_gemm.cu",
    "sm90_grouped_gemm_m128_bf16": "sm90/grouped_gemm_m128_bf16.cu",
    "sm90_grouped_gemm_m128_f16": "sm90/grouped_gemm_m128_f16.cu",
    "sm90_grouped_gemm_m64_bf16": "sm90/grouped_gemm_m64_bf16.cu",
    "sm90_grouped_gemm_m64_f16": "sm90/grouped_gemm_m64_f16.cu",
    "sm90_swapped_bf16": "sm90/swapped_bf16.cu",
    "sm90_swapped_f16": "sm90/swapped_f16.cu",
    "sm90_swapped_wide_bf16": "sm90/swapped_wide_bf16.cu",
    "sm90_swapped_wide_f16": "sm90/swapped_wide_f16.cu",
    "sm90_grouped_gemm_relu2": "sm90/grouped_gemm_relu2.cu",
    "sm90_grouped_gemm_mn_gated_bf16": "sm90/grouped_gemm_mn_gated_bf16.cu",
    "sm90_grouped_gemm_mn_pairs_bf16": "sm90/grouped_gemm_mn_pairs_bf16.cu",
    "sm90_grouped_gemm_mn_relu2_bf16": "sm90/grouped_gemm_mn_relu2_bf16.cu",
    "sm90_grouped_gemm_mn_gemm2_bf16": "sm90/grouped_gemm_mn_gemm2_bf16.cu",
    "sm90_grouped_gemm_mn_gated_f16": "sm90/grouped_gemm_mn_gated_f16.cu",
    "sm90_grouped_gemm_mn_pairs_f16": "sm90/grouped_gemm_mn_pairs_f16.cu",
    "sm90_grouped_gemm_mn_relu2_f16": "sm90/grouped_gemm_mn_relu2_f16.cu",
    "sm90_grouped_gemm_mn_gemm2_f16": "sm90/grouped_gemm_mn_gemm2_f16.cu",
    "sm90_swapped_mn_bf16": "sm90/swapped_mn_bf16.cu",
    "sm90_swapped_mn_f16": "sm90/swapped_mn_f16.cu",
    "sm90_swapped_wide_mn_bf16": "sm90/swapped_wide_mn_bf16.cu",
    "sm90_swapped_wide_mn_f16": "sm90/swapped_wide_mn_f16.cu",
    "sm90_grouped_gemm_fp8": "sm90/grouped_gemm_fp8.cu",  # compiled and SASS-checked only (D30)
}
# The tags every kernel of a GEMM module carries. A kernel query reads a module only if it names
# each of them with the same value (modules_needed), so a call compiles only what it may use
# (docs/DESIGN.md D28). routing and permute declare none: every query reads them.
MODULE_TAGS: dict[str, dict[str, str]] = {
    "sm80_grouped_gemm": {"family": "sm80"},
    **{
        f"sm90_grouped_gemm_m{tile_m}_{elem}": {"family": "rows", "w": "k", "elem": elem}
        for tile_m in (128, 64)
        for elem in ("bf16", "f16")
    },
    "sm90_grouped_gemm_relu2": {"family": "rows", "w": "k", "op": "gemm1_relu2"},
    **{
        f"sm90_grouped_gemm_mn_{part}_{elem}": {"family": "rows", "w": "mn", "elem": elem, **op}
        for elem in ("bf16", "f16")
        for part, op in (
            ("gated", {"op": "gemm1_gated"}),
            ("pairs", {"op": "gemm1_gated_pairs"}),
            ("relu2", {"op": "gemm1_relu2"}),
            ("gemm2", {}),
        )
    },
    **{
        f"sm90_swapped{wide}{mn}_{elem}": {"family": "swapped", "geometry": geometry, "w": w, "elem": elem}
        for wide, geometry in (("", "narrow"), ("_wide", "wide"))
        for mn, w in (("", "k"), ("_mn", "mn"))
        for elem in ("bf16", "f16")
    },
    # e4m3 weights and activations: read only by a query naming elem=e4m3 (fp8 layers, D30)
    "sm90_grouped_gemm_fp8": {"family": "rows", "w": "k", "elem": "e4m3"},
    "quant": {"op": "quantize_rows"},  # fp8 layers only: x to e4m3 before GEMM1 (D30)
}
# Modules built on architecture-specific instructions, and the targets that have them.
MODULE_ARCHS: dict[str, tuple[str, ...]] = {
    **{m: ("sm_90a",) for m in MODULES if m.startswith("sm90_")},
    "quant": ("sm_90a", "sm_100a"),  # cvt to e4m3 (sm_89+); the fp8 GEMMs are Hopper's
}


def source_file(module: str) -> str:
    """The module's source under the source root: its own, or a variant `moefuse.override`
    names (tools that time a kernel variant)."""
    return overrides.current().source(module) or MODULES[module]


def modules_for(arch: str) -> list[str]:
    """The modules that compile for `arch`."""
    return [m for m in MODULES if arch in MODULE_ARCHS.get(m, (arch,))]


def modules_needed(arch: str, *queries: Mapping[str, object]) -> list[str]:
    """The modules for `arch` that any of these kernel queries reads: a query reads a module if it
    names each of the module's MODULE_TAGS with the same value (routing and permute: always)."""
    wanted = [{key: str(value) for key, value in query.items()} for query in queries]
    return [m for m in modules_for(arch) if any(MODULE_TAGS.get(m, {}).items() <= w.items() for w in wanted)]


SOURCE_SUFFIXES = (".cu", ".cuh")


@cache
def source_root() -> Path:
    """The `cuda_src` folder: inside the installed package, or beside it in a source checkout."""
    package_dir = Path(__file__).resolve().parent
    for candidate in (package_dir / "cuda_src", package_dir.parent / "cuda_src"):
        if (candidate / MODULES["routing"]).is_file():
            return candidate
    raise FileNotFoundError(f"moefuse: CUDA sources not found next to {package_dir}")


def source_digest(root: Path) -> str:
    """SHA-256 over every source file's relative path and bytes: any edit to any header changes it."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.suffix in SOURCE_SUFFIXES):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()
