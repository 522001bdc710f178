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
    "sm90_grouped_gemm_m128": "sm90/grouped_gemm_m128.cu",
    "sm90_grouped_gemm_m64": "sm90/grouped_gemm_m64.cu",
    "sm90_swapped_bf16": "sm90/swapped_bf16.cu",
    "sm90_swapped_f16": "sm90/swapped_f16.cu",
    "sm90_swapped_wide_bf16": "sm90/swapped_wide_bf16.cu",
    "sm90_swapped_wide_f16": "sm90/swapped_wide_f16.cu",
    "sm90_grouped_gemm_relu2": "sm90/grouped_gemm_relu2.cu",
    "sm90_grouped_gemm_mn_gemm1_bf16": "sm90/grouped_gemm_mn_gemm1_bf16.cu",
    "sm90_grouped_gemm_mn_gemm2_bf16": "sm90/grouped_gemm_mn_gemm2_bf16.cu",
    "sm90_grouped_gemm_mn_gemm1_f16": "sm90/grouped_gemm_mn_gemm1_f16.cu",
    "sm90_grouped_gemm_mn_gemm2_f16": "sm90/grouped_gemm_mn_gemm2_f16.cu",
}
# Modules only some models need: compiled when a kernel query first names all of their tags, so a
# cold start compiles what the call uses (docs/DESIGN.md D28). Every kernel in one carries them.
VARIANT_TAGS: dict[str, dict[str, str]] = {
    "sm90_grouped_gemm_relu2": {"op": "gemm1_relu2", "w": "k"},
    "sm90_grouped_gemm_mn_gemm1_bf16": {"w": "mn", "elem": "bf16"},
    "sm90_grouped_gemm_mn_gemm2_bf16": {"w": "mn", "elem": "bf16"},
    "sm90_grouped_gemm_mn_gemm1_f16": {"w": "mn", "elem": "f16"},
    "sm90_grouped_gemm_mn_gemm2_f16": {"w": "mn", "elem": "f16"},
    "quant": {"op": "quantize_rows"},  # fp8 layers only
}
# Modules built on architecture-specific instructions, and the targets that have them.
MODULE_ARCHS: dict[str, tuple[str, ...]] = {
    "sm90_grouped_gemm_m128": ("sm_90a",),
    "sm90_grouped_gemm_m64": ("sm_90a",),
    "sm90_swapped_bf16": ("sm_90a",),
    "sm90_swapped_f16": ("sm_90a",),
    "sm90_swapped_wide_bf16": ("sm_90a",),
    "sm90_swapped_wide_f16": ("sm_90a",),
    **{module: ("sm_90a",) for module in VARIANT_TAGS},
    "quant": ("sm_90a", "sm_100a"),  # cvt to e4m3 (sm_89+); the fp8 GEMMs are Hopper's
}


def source_file(module: str) -> str:
    """The module's source under the source root: its own, or a variant `moefuse.override`
    names (tools that time a kernel variant)."""
    return overrides.current().source(module) or MODULES[module]


def modules_for(arch: str) -> list[str]:
    """The modules that compile for `arch`."""
    return [m for m in MODULES if arch in MODULE_ARCHS.get(m, (arch,))]


def modules_needed(arch: str, tags: Mapping[str, object]) -> list[str]:
    """The modules for `arch` that a kernel query with these tags reads: every module but the
    variants whose tags the query does not all name."""
    wanted = {key: str(value) for key, value in tags.items()}
    return [m for m in modules_for(arch) if VARIANT_TAGS.get(m, {}).items() <= wanted.items()]


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
