"""Compile every kernel for the named architectures, no GPU needed, and report their resources.

    python -m moefuse.precompile --arch sm_80 sm_90a sm_100a [--out DIR] [--force]

DIR (default: the cache folder, ~/.cache/moefuse or $MOEFUSE_CACHE_DIR) then serves as a warm
cache: point MOEFUSE_CACHE_DIR at it and the first call compiles nothing. Into --out DIR entries
are published readable by all (0644), and DIR, with any folder above it that this creates, is
made 0755, whatever the umask: a cache built by root in a deployment image serves any user, and
as only its owner can write it, the runtime trusts it. Without --out (the user's own cache) they
stay private: 0600 in a 0700 folder. An existing DIR keeps its mode; one the runtime would not
trust (writable by others) is filled all the same, with a warning that names the fix. A module
whose verified entry DIR already holds is not compiled again (--force compiles it anyway); its
row in the table comes from the compiler log its entry's record keeps, so the table is the same
either way. Modules compile in parallel, one per CPU; stderr says each one as it is found or
finishes.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
import warnings
from pathlib import Path
from typing import NamedTuple

from . import _cache, _device, _nvrtc, _sources

HINT = "an H100 or H200 needs --arch sm_90a, a B200 --arch sm_100a"


class Built(NamedTuple):
    arch: str
    module: str
    result: _nvrtc.CompileResult  # compiled now, or read back from the entry and its record
    compiled: bool


def supported_archs() -> list[str]:
    """The targets that this NVRTC compiles and that the runtime would build for some GPU: its
    choice (`_device.arch_for`) for every compute capability from 8.0 that NVRTC knows."""
    capabilities = (divmod(number, 10) for number in _nvrtc.supported_archs())
    return [_device.arch_for(cc) for cc in capabilities if cc >= _device.MIN_COMPUTE_CAPABILITY]


def arch_error(archs: list[str], supported: list[str]) -> str | None:
    """Why some of `archs` cannot be built (None: all can)."""
    unknown = [arch for arch in archs if arch not in supported]
    if not unknown:
        return None
    sentences = [f"unsupported architecture {' '.join(unknown)}."]
    sentences += [
        f"{arch} lacks the 'a': moefuse's kernels for it need the architecture-specific {arch}a."
        for arch in unknown
        if f"{arch}a" in supported
    ]
    sentences.append(f"This NVRTC ({_nvrtc.nvrtc_version()}) builds {' '.join(supported)} ({HINT}).")
    return " ".join(sentences)


def _say(arch: str, module: str, what: str) -> None:
    print(f"{arch:8} {module}: {what}", file=sys.stderr, flush=True)


def make_folder(out: Path, shared: bool) -> None:
    """Create `out` and whatever folders above it are missing, each 0755 where `shared` (else
    0700) whatever the umask, or check the one there: an unusable `out` fails here, before any
    work, and one the runtime would not trust warns. Existing folders keep their modes."""
    mode = _cache.SHARED_MODES[0] if shared else _cache.PRIVATE_MODES[0]
    for folder in reversed((out, *out.parents)):  # outermost first
        if folder.is_dir():
            continue
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            if not folder.is_dir():  # a file in the way
                raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder)) from None
            continue  # another process made it just now
        folder.chmod(mode)  # what the umask took away, from a folder made just now
    if problem := _cache._distrust(out.stat(), out):
        warnings.warn(
            f"moefuse: the runtime will not use {out} as its cache folder: it {problem}",
            _cache.CacheWarning,
            stacklevel=3,
        )


def precompile(archs: list[str], out: Path, force: bool = False, shared: bool = False) -> list[Built]:
    """Every module of every arch in `out`: its verified entry there (cached) or, where that is
    missing or damaged (or `force`), compiled and published (`shared`: readable by all, in a
    folder made 0755), in parallel. One Built per module."""
    make_folder(out, shared)
    root = _sources.source_root()
    builds = [(module, arch) for arch in dict.fromkeys(archs) for module in _sources.modules_for(arch)]
    found = {b: None if force else _cache.cached(_cache.cubin_path(*b, root, out)) for b in builds}
    for (module, arch), result in found.items():
        if result is not None:
            _say(arch, module, "cached")
    todo = [b for b in builds if found[b] is None]
    workers = min(len(todo), os.cpu_count() or 1)  # compiling is CPU-bound

    def work(module: str, arch: str) -> _nvrtc.CompileResult:
        return _cache.compile_module(module, arch, directory=out, shared=shared)[1]

    for (module, arch), result, seconds in _cache.compile_all(todo, workers, work):
        found[(module, arch)] = result
        _say(arch, module, f"compiled in {seconds:.1f} s")
    return [Built(arch, module, found[(module, arch)], (module, arch) in todo) for module, arch in builds]


def table(rows: list[tuple[str, str, _nvrtc.KernelResources]]) -> list[str]:
    """One aligned line per (arch, kernel, resources), the kernel's name last (names are long)."""
    lines = [f"{'arch':8} {'regs':>5} {'smem':>6} {'stack':>6} {'spill st':>9} {'spill ld':>9}  kernel"]
    for arch, kernel, res in rows:
        lines.append(
            f"{arch:8} {res.registers:5d} {res.static_smem_bytes:6d} {res.stack_bytes:6d} "
            f"{res.spill_store_bytes:9d} {res.spill_load_bytes:9d}  {kernel}"
        )
    return lines


def report(built: list[Built], out: Path) -> list[str]:
    """The resource table of every kernel, then a summary."""
    rows, unreported = [], []
    for arch, module, result, _ in built:
        resources = sorted(_nvrtc.parse_resources(result.log).items())
        rows += [(arch, kernel, res) for kernel, res in resources]
        if not resources:
            unreported.append(f"{module} ({arch})")
    spilling = [kernel for _, kernel, res in rows if res.spill_store_bytes or res.spill_load_bytes]
    compiled = sum(b.compiled for b in built)
    lines = table(rows)
    if unreported:  # NVRTC 13.0 returns no ptxas report
        lines.append(f"no ptxas report from NVRTC {_nvrtc.nvrtc_version()} for {', '.join(unreported)}")
    lines.append(
        f"{len(rows)} kernels of {len(built)} modules in {out} ({compiled} compiled, "
        f"{len(built) - compiled} cached); {len(spilling)} spill registers"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m moefuse.precompile", description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", required=True, help=f"targets, e.g. sm_80 sm_90a ({HINT})")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="cubin folder, readable by all users (default: the cache folder, private)",
    )
    parser.add_argument("--force", action="store_true", help="compile modules already cached there too")
    args = parser.parse_args(argv)
    if error := arch_error(args.arch, supported_archs()):
        parser.error(error)  # exits with status 2, like any usage error
    out = args.out or _cache.cache_dir()
    try:  # --out DIR is a cache for every user; the default folder is the user's own
        built = precompile(args.arch, out, args.force, shared=args.out is not None)
    except (_nvrtc.CompileError, OSError) as exc:
        print(f"{parser.prog}: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report(built, out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
