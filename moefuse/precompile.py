"""Compile every kernel for the named architectures, no GPU needed, and report their resources.

    python -m moefuse.precompile --arch sm_80 sm_90a sm_100a --out DIR

DIR (default: the cache folder, ~/.cache/moefuse or $MOEFUSE_CACHE_DIR) then serves as a warm
cache: point MOEFUSE_CACHE_DIR at it and the first call compiles nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import _cache, _nvrtc, _sources


def precompile(archs: list[str], out: Path) -> list[tuple[str, str, _nvrtc.KernelResources]]:
    """Compile (and publish into `out`) every module for every arch; one row per kernel."""
    rows = []
    for arch in archs:
        for module in _sources.modules_for(arch):
            print(f"compiling {module} for {arch} ...", file=sys.stderr, flush=True)
            _, result = _cache.compile_module(module, arch, directory=out, force=True)
            for kernel, res in sorted(_nvrtc.parse_resources(result.log).items()):
                rows.append((arch, kernel, res))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moefuse.precompile", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", required=True, help="targets, e.g. sm_80 sm_90a sm_100a")
    parser.add_argument("--out", type=Path, default=None, help="cubin folder (default: the cache folder)")
    args = parser.parse_args(argv)
    out = args.out or _cache.cache_dir()
    rows = precompile(args.arch, out)
    print(f"{'arch':8} {'kernel':40} {'regs':>5} {'smem':>6} {'stack':>6} {'spill st':>9} {'spill ld':>9}")
    for arch, kernel, res in rows:
        print(
            f"{arch:8} {kernel:40} {res.registers:5d} {res.static_smem_bytes:6d} {res.stack_bytes:6d} "
            f"{res.spill_store_bytes:9d} {res.spill_load_bytes:9d}"
        )
    spilling = [kernel for _, kernel, res in rows if res.spill_store_bytes or res.spill_load_bytes]
    print(f"{len(rows)} kernels compiled into {out}; {len(spilling)} spill registers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
