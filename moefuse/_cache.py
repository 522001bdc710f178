"""The on-disk cubin cache and the per-device module and kernel memos.

A cache entry's name carries a key over everything that determines the cubin: the module, every
source byte, the architecture, the NVRTC version and the options. Entries are published
atomically (written under a temporary name in the same folder, then renamed), so concurrent
processes never load a half-written cubin.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import _nvrtc, _sources, _spec

CACHE_ENV = "MOEFUSE_CACHE_DIR"


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "moefuse"


def cache_key(module: str, arch: str, root: Path, source: str | None = None) -> str:
    parts = [
        module,
        source or _sources.source_file(module),
        _sources.source_digest(root),
        arch,
        _nvrtc.nvrtc_version(),
        *_nvrtc.compile_options(arch, Path("cuda_src")),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cubin_path(module: str, arch: str, root: Path, directory: Path, source: str | None = None) -> Path:
    return directory / f"{module}-{arch}-{cache_key(module, arch, root, source)[:24]}.cubin"


def publish(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def compile_module(
    module: str,
    arch: str,
    *,
    root: Path | None = None,
    directory: Path | None = None,
    force: bool = False,
    source: str | None = None,
) -> tuple[Path, _nvrtc.CompileResult | None]:
    """Path of the module's cubin for `arch` (from `source`, default: the module's source now),
    compiling and publishing it unless cached (or `force`). Returns the compile result too when
    this call compiled (None on a cache hit)."""
    root, source = root or _sources.source_root(), source or _sources.source_file(module)
    path = cubin_path(module, arch, root, directory or cache_dir(), source)
    if path.is_file() and not force:
        return path, None
    result = _nvrtc.compile_cubin(root / source, arch, include_dir=root)
    publish(path, result.cubin)
    return path, result


def compile_missing(arch: str) -> None:
    """Compile, in parallel, every module for `arch` that the disk cache lacks (a cold start
    then costs about the slowest module instead of the sum; NVRTC runs outside the GIL). A cold
    start takes ~15 s on Hopper, so it says so on stderr, once at the start and once at the end."""
    root, directory = _sources.source_root(), cache_dir()
    missing = [m for m in _sources.modules_for(arch) if not cubin_path(m, arch, root, directory).is_file()]
    if not missing:
        return
    print(
        f"moefuse: compiling {len(missing)} kernel modules for {arch}, once (cached in {directory}) ...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    contexts = [contextvars.copy_context() for _ in missing]  # the overrides' sources, per thread
    with ThreadPoolExecutor(max_workers=len(missing)) as pool:
        list(pool.map(lambda ctx, module: ctx.run(compile_module, module, arch), contexts, missing))
    print(f"moefuse: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


_loaded: dict[tuple, object] = {}
_functions: dict[tuple, object] = {}
_specs: dict[tuple, dict[str, _spec.KernelSpec]] = {}
_lock = threading.Lock()


def _cubin(module: str, arch: str, source: str) -> Path:
    """The module's cubin for `arch` from `source` in the cache, compiling every missing module
    first."""
    if not cubin_path(module, arch, _sources.source_root(), cache_dir(), source).is_file():
        compile_missing(arch)
    return compile_module(module, arch, source=source)[0]


def module_specs(module: str, arch: str) -> dict[str, _spec.KernelSpec]:
    """The launch contracts the module's cubin publishes, read once per source and arch (one
    KernelSpec object per kernel and source: the memos below key on it)."""
    key = (module, _sources.source_file(module), arch)
    specs = _specs.get(key)
    if specs is None:
        with _lock:
            specs = _specs.get(key)
            if specs is None:
                cubin = _cubin(module, arch, key[1]).read_bytes()
                specs = _specs[key] = _spec.read_specs(cubin, module, key[1])
    return specs


def catalog(arch: str) -> tuple[_spec.KernelSpec, ...]:
    """Every kernel of every module built for `arch`."""
    modules = _sources.modules_for(arch)
    return tuple(spec for module in modules for spec in module_specs(module, arch).values())


def load_function(spec: _spec.KernelSpec, device_id: int, arch: str):
    """The kernel on `device_id`, its module loaded once per process, device and source."""
    import cupy

    fn = _functions.get((device_id, spec))  # a spec object stands for one module source
    if fn is None:
        key = (device_id, spec.module, spec.source)
        with _lock:
            module = _loaded.get(key)
            if module is None:
                with cupy.cuda.Device(device_id):
                    path = _cubin(spec.module, arch, spec.source)
                    module = _loaded[key] = cupy.RawModule(path=str(path))
        fn = _functions[(device_id, spec)] = module.get_function(spec.name)
    return fn
