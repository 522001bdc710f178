"""The on-disk cubin cache and the per-device module and kernel memos.

An entry is two files: NAME.cubin, a plain cubin (cuobjdump reads it), and NAME.cubin.json, its
record: the cubin's size and SHA-256 and the compiler's log (ptxas's resource report, from which
`python -m moefuse.precompile` prints a module it did not compile). NAME carries a key over
everything that determines the cubin: the module, every source byte, the architecture, the NVRTC
version, the options and the entry format.

Publishing. Each file is written under a temporary name in the same folder and renamed, the
record first: no cubin is ever visible before its record, so a cubin without one was not
published whole (damaged), and a record without its cubin (a publish under way, or cut short) is
no entry. NVRTC's output depends only on what the key covers (two compiles are byte-identical),
so processes publishing the same entry at once write the same two files, and any interleaving of
their renames leaves a matching pair.

Reading. The cubin is read once, checked against its record's size and digest, and the module is
loaded from those bytes: nothing can change between the check and the load. An entry that is
truncated or corrupt, lacks its record or cannot be read, or that another user could have written
(group or other write permission, or an owner other than this user or root) is damaged: one
CacheWarning names it, and it is compiled and published again (the rename replaces it by a fresh
file of this user's).

Folders. A cubin runs in the caller's process with access to all its GPU memory. The runtime's
folder, $MOEFUSE_CACHE_DIR or ~/.cache/moefuse, is created with mode 0700. One that cannot be
created, or that another user could write into (the rule above), is not used at all: the runtime
compiles into a private folder instead (tempfile.mkdtemp, mode 0700, one per process, removed at
exit) and says so in one CacheWarning naming both. A trusted folder this process cannot write (a
read-only, pre-built cache) is still read; what it lacks is compiled into the private folder,
with that warning at the first such compile.
"""

from __future__ import annotations

import atexit
import contextvars
import hashlib
import json
import os
import shutil
import stat
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from . import _nvrtc, _sources, _spec

CACHE_ENV = "MOEFUSE_CACHE_DIR"
# In the key: entries of an earlier layout (no record) read as absent, not as damaged.
ENTRY_FORMAT = "cubin and record 1"


class CacheWarning(RuntimeWarning):
    """A cache entry is damaged or untrusted and is compiled again, or a cache folder is not used."""


class DamagedEntry(Exception):
    """A cache entry that must not be loaded; the message says why."""


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
        ENTRY_FORMAT,
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def entry_name(module: str, arch: str, root: Path, source: str | None = None) -> str:
    return f"{module}-{arch}-{cache_key(module, arch, root, source)[:24]}.cubin"


def cubin_path(module: str, arch: str, root: Path, directory: Path, source: str | None = None) -> Path:
    return directory / entry_name(module, arch, root, source)


def record_path(cubin: Path) -> Path:
    return cubin.with_name(cubin.name + ".json")


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def publish(path: Path, result: _nvrtc.CompileResult) -> None:
    """Publish the entry: its record, then the cubin (the module docstring says why in that order)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    digest = hashlib.sha256(result.cubin).hexdigest()
    record = {"size": len(result.cubin), "sha256": digest, "log": result.log}
    _write_atomically(record_path(path), json.dumps(record).encode())
    _write_atomically(path, result.cubin)


def _distrust(status: os.stat_result) -> str | None:
    """Why another user could have written the file or folder with this status (None: no one could)."""
    if status.st_uid not in (os.geteuid(), 0):
        return f"is owned by another user (uid {status.st_uid})"
    if status.st_mode & 0o022:
        return f"is writable by other users (mode {stat.S_IMODE(status.st_mode):o})"
    return None


def _read_trusted(path: Path) -> bytes:
    """The file's bytes, its owner and mode checked on the open file itself."""
    with open(path, "rb") as f:
        if problem := _distrust(os.fstat(f.fileno())):
            raise DamagedEntry(problem)
        return f.read()


def _read_record(path: Path) -> tuple[int, str, str]:
    """The cubin's size, SHA-256 and compile log from the record at `path`."""
    try:
        record = json.loads(_read_trusted(path))
        return int(record["size"]), str(record["sha256"]), str(record["log"])
    except DamagedEntry as exc:
        raise DamagedEntry(f"has a record that {exc}") from None
    except FileNotFoundError:
        raise DamagedEntry("has no record") from None
    except OSError as exc:
        raise DamagedEntry(f"has a record that cannot be read ({exc.strerror})") from None
    except (ValueError, KeyError, TypeError):
        raise DamagedEntry("has a malformed record") from None


def read_entry(path: Path) -> _nvrtc.CompileResult | None:
    """The entry's cubin and compile log, checked against its record; None where there is no
    cubin. Raises DamagedEntry, saying why, for a cubin that must not be loaded."""
    try:
        cubin = _read_trusted(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise DamagedEntry(f"cannot be read ({exc.strerror})") from None
    size, digest, log = _read_record(record_path(path))
    if len(cubin) != size:
        raise DamagedEntry(f"is {len(cubin)} bytes, its record says {size}")
    if hashlib.sha256(cubin).hexdigest() != digest:
        raise DamagedEntry("does not match its record's SHA-256")
    return _nvrtc.CompileResult(cubin=cubin, log=log)


def cached(path: Path, *, warn: bool = True) -> _nvrtc.CompileResult | None:
    """The verified entry at `path`; None where there is none or it is damaged (then, if `warn`,
    one CacheWarning names it: the caller compiles it again)."""
    try:
        return read_entry(path)
    except DamagedEntry as exc:
        if warn:
            message = f"moefuse: cache entry {path} {exc}: compiling it again"
            warnings.warn(message, CacheWarning, stacklevel=2)
        return None


def compile_module(
    module: str, arch: str, *, directory: Path, root: Path | None = None, source: str | None = None
) -> tuple[Path, _nvrtc.CompileResult]:
    """Compile the module for `arch` (from `source`, default: the module's source now) and
    publish it into `directory`; the entry's path and the compile result."""
    root, source = root or _sources.source_root(), source or _sources.source_file(module)
    path = cubin_path(module, arch, root, directory, source)
    result = _nvrtc.compile_cubin(root / source, arch, include_dir=root, module=module)
    publish(path, result)
    return path, result


def compile_all(
    builds: list[tuple[str, str]], directory: Path, workers: int
) -> Iterator[tuple[tuple[str, str], _nvrtc.CompileResult, float]]:
    """Compile and publish every (module, arch) into `directory`, `workers` at a time (NVRTC runs
    outside the GIL), each in a copy of the caller's context (the overrides' sources). Yields
    each build as it finishes, with its result and seconds; a CompileError surfaces here."""
    if not builds:
        return

    def timed(build: tuple[str, str]) -> tuple[_nvrtc.CompileResult, float]:
        start = time.perf_counter()
        _, result = compile_module(*build, directory=directory)
        return result, time.perf_counter() - start

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(contextvars.copy_context().run, timed, build): build for build in builds}
        for future in as_completed(futures):
            yield (futures[future], *future.result())


@dataclass(frozen=True)
class _Folders:
    """Where the runtime looks for entries (in order) and where it publishes."""

    read: tuple[Path, ...]
    write: Path | None  # None: a read-only cache folder, until something must be compiled


_private: dict[int, Path] = {}  # per process id: a forked child makes its own
_folders: dict[Path, _Folders] = {}  # per configured cache folder


def private_dir() -> Path:
    """This process's own cache folder (mode 0700), removed when the process exits."""
    pid = os.getpid()
    if pid not in _private:
        _private[pid] = Path(tempfile.mkdtemp(prefix="moefuse-cache-"))
        atexit.register(_remove_private, _private[pid], pid)
    return _private[pid]


def _remove_private(path: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child, which inherits the handler
        shutil.rmtree(path, ignore_errors=True)


def _unusable(folder: Path) -> str | None:
    """Why the runtime must not use `folder` at all (None: it may)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _distrust(folder.stat())
    except OSError as exc:
        return f"cannot be created ({exc.strerror or exc})"


def _choose_folders(folder: Path) -> _Folders:
    """The cache folder where this process can trust it; otherwise the private folder, with
    one warning naming both."""
    if problem := _unusable(folder):
        private = private_dir()
        warnings.warn(
            f"moefuse: not using the kernel cache folder {folder}: it {problem}; compiling into "
            f"{private} for this process instead",
            CacheWarning,
            stacklevel=2,
        )
        return _Folders(read=(private,), write=private)
    return _Folders(read=(folder,), write=folder if os.access(folder, os.W_OK) else None)


def _runtime_folders() -> _Folders:
    configured = cache_dir()
    folders = _folders.get(configured)
    if folders is None:
        folders = _folders[configured] = _choose_folders(configured)
    return folders


def _write_folder() -> Path:
    """Where the runtime publishes. A read-only cache folder gets this process's private folder
    beside it here, at the first compile, with one warning naming both."""
    folders = _runtime_folders()
    if folders.write is None:
        (folder,) = folders.read
        private = private_dir()
        warnings.warn(
            f"moefuse: the kernel cache folder {folder} is not writable: compiling what it lacks "
            f"into {private} for this process",
            CacheWarning,
            stacklevel=2,
        )
        folders = _folders[folder] = _Folders(read=(private, folder), write=private)
    return folders.write


def _find(module: str, arch: str, source: str, *, warn: bool = True) -> _nvrtc.CompileResult | None:
    """The module's verified entry in the first of the runtime's folders that has one."""
    name = entry_name(module, arch, _sources.source_root(), source)
    for folder in _runtime_folders().read:
        found = cached(folder / name, warn=warn)
        if found is not None:
            return found
    return None


def compile_missing(arch: str) -> None:
    """Compile, in parallel, every module for `arch` that the runtime's folders lack or hold
    damaged (a cold start then costs about the slowest module instead of the sum). A cold start
    takes ~15 s on Hopper, so it says so on stderr, once at the start and once at the end."""
    missing = [m for m in _sources.modules_for(arch) if _find(m, arch, _sources.source_file(m)) is None]
    if not missing:
        return
    directory = _write_folder()
    print(
        f"moefuse: compiling {len(missing)} kernel modules for {arch}, once (cached in {directory}) ...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    for _ in compile_all([(m, arch) for m in missing], directory, workers=len(missing)):
        pass
    print(f"moefuse: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


_loaded: dict[tuple, object] = {}
_functions: dict[tuple, object] = {}
_specs: dict[tuple, dict[str, _spec.KernelSpec]] = {}
_lock = threading.Lock()


def _cubin(module: str, arch: str, source: str) -> bytes:
    """The module's verified cubin for `arch` from `source`. Where the cache lacks it, every
    module the arch lacks compiles first; that pass warns about a damaged entry, so the first
    look here does not (one warning per entry)."""
    found = _find(module, arch, source, warn=False)
    if found is None:
        compile_missing(arch)
        found = _find(module, arch, source)  # built above, unless `source` is not the context's
    if found is None:
        _, found = compile_module(module, arch, directory=_write_folder(), source=source)
    return found.cubin


def module_specs(module: str, arch: str) -> dict[str, _spec.KernelSpec]:
    """The launch contracts the module's cubin publishes, read once per source and arch (one
    KernelSpec object per kernel and source: the memos below key on it)."""
    key = (module, _sources.source_file(module), arch)
    specs = _specs.get(key)
    if specs is None:
        with _lock:
            specs = _specs.get(key)
            if specs is None:
                specs = _specs[key] = _spec.read_specs(_cubin(module, arch, key[1]), module, key[1])
    return specs


def catalog(arch: str) -> tuple[_spec.KernelSpec, ...]:
    """Every kernel of every module built for `arch`."""
    modules = _sources.modules_for(arch)
    return tuple(spec for module in modules for spec in module_specs(module, arch).values())


def load_function(spec: _spec.KernelSpec, device_id: int, arch: str):
    """The kernel on `device_id`, its module loaded once per process, device and source."""
    import cupy
    from cupy.cuda import function

    fn = _functions.get((device_id, spec))  # a spec object stands for one module source
    if fn is None:
        key = (device_id, spec.module, spec.source)
        with _lock:
            module = _loaded.get(key)
            if module is None:
                with cupy.cuda.Device(device_id):
                    module = function.Module()
                    module.load(_cubin(spec.module, arch, spec.source))  # the verified bytes
                    _loaded[key] = module
        fn = _functions[(device_id, spec)] = module.get_function(spec.name)
    return fn
