"""The on-disk cubin cache and the per-device module and kernel memos.

A cache entry's name carries a key over everything that determines the cubin: the module, every
source byte, the architecture, the NVRTC version and the options. Entries are published
atomically (written under a temporary name in the same folder, then renamed), so concurrent
processes never load a half-written cubin.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import _nvrtc, _sources

CACHE_ENV = "MOEFUSE_CACHE_DIR"


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "moefuse"


def cache_key(module: str, arch: str, root: Path) -> str:
    parts = [
        module,
        _sources.MODULES[module],
        _sources.source_digest(root),
        arch,
        _nvrtc.nvrtc_version(),
        *_nvrtc.compile_options(arch, Path("cuda_src")),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cubin_path(module: str, arch: str, root: Path, directory: Path) -> Path:
    return directory / f"{module}-{arch}-{cache_key(module, arch, root)[:24]}.cubin"


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
) -> tuple[Path, _nvrtc.CompileResult | None]:
    """Path of the module's cubin for `arch`, compiling and publishing it unless cached (or
    `force`). Returns the compile result too when this call compiled (None on a cache hit)."""
    root = root or _sources.source_root()
    path = cubin_path(module, arch, root, directory or cache_dir())
    if path.is_file() and not force:
        return path, None
    result = _nvrtc.compile_cubin(root / _sources.MODULES[module], arch, include_dir=root)
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
    with ThreadPoolExecutor(max_workers=len(missing)) as pool:
        list(pool.map(lambda module: compile_module(module, arch), missing))
    print(f"moefuse: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


_loaded: dict[tuple[int, str], object] = {}
_functions: dict[tuple[int, str, str], object] = {}
_lock = threading.Lock()


def load_module(module: str, device_id: int, arch: str):
    """The module as a `cupy.RawModule` on `device_id`, loaded once per process and device."""
    import cupy

    with _lock:
        key = (device_id, module)
        if key not in _loaded:
            if not cubin_path(module, arch, _sources.source_root(), cache_dir()).is_file():
                compile_missing(arch)
            path, _ = compile_module(module, arch)
            with cupy.cuda.Device(device_id):
                _loaded[key] = cupy.RawModule(path=str(path))
        return _loaded[key]


def load_function(module: str, name: str, device_id: int, arch: str):
    """Kernel `name` of the module on `device_id`, looked up once (every forward launches a few)."""
    key = (device_id, module, name)
    fn = _functions.get(key)
    if fn is None:
        fn = _functions[key] = load_module(module, device_id, arch).get_function(name)
    return fn


def forget(module: str) -> None:
    """Drop the module's loaded copies and kernels, so the next use loads it again (tools that
    swap a variant source in)."""
    with _lock:
        for memo in (_loaded, _functions):
            for key in [k for k in memo if k[1] == module]:
                del memo[key]
