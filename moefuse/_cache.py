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
their renames leaves a matching pair. The runtime publishes private files (0600) into a private
folder (0700); `python -m moefuse.precompile --out DIR` publishes files readable by all (0644)
and creates DIR 0755, so that a cache built by one user (root, in a deployment image) serves
others. Neither is writable by anyone but its owner, so both are trusted (below).

Reading. The cubin is read once, checked against its record's size and digest, and the module is
loaded from those bytes: nothing can change between the check and the load. An entry that is
truncated or corrupt, lacks its record or cannot be read, or that another user could have written
(group or other write permission, or an owner other than this user or root) is damaged: one
CacheWarning names it, and it is compiled and published again (the rename replaces it by a fresh
file of this user's). The verified bytes of each module are kept for the process (`_verified`):
its launch contracts and its loads on every device read the same bytes, read and checked once.

Folders. A cubin runs in the caller's process with access to all its GPU memory. The runtime's
folder, $MOEFUSE_CACHE_DIR or ~/.cache/moefuse, is created with mode 0700. One that cannot be
created, or that another user could write into (the rule above), is not used at all: the runtime
compiles into a private folder instead (tempfile.mkdtemp, mode 0700, one per process, removed at
exit) and says so in one CacheWarning naming both; where the folder is this user's and only its
mode is wrong, the warning names the fix (`chmod go-w DIR`): a library does not change a folder's
permissions itself. A trusted folder this process cannot write (a read-only, pre-built cache) is
still read; what it lacks is compiled into the private folder, with that warning at the first
such compile. A publish that fails at run time (a full disk, a quota, a read-only mount that
os.access called writable) does not fail the call: the module is already compiled in memory,
and the process says so in one CacheWarning naming the folder and the error, then compiles into
its private folder from there on (where that fails too, the compiled bytes serve the process).
`python -m moefuse.precompile` fails on such an error instead (exit status 1).
"""

from __future__ import annotations

import atexit
import contextlib
import contextvars
import functools
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
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from . import _nvrtc, _sources, _spec

CACHE_ENV = "MOEFUSE_CACHE_DIR"
# In the key: entries of an earlier layout (no record) read as absent, not as damaged.
ENTRY_FORMAT = "cubin and record 1"
# (folder, files): the runtime's own cache, and one that precompile --out builds for every user.
# Only the owner may write either: both pass _distrust.
PRIVATE_MODES = (0o700, 0o600)
SHARED_MODES = (0o755, 0o644)


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


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)  # mkstemp's 0600, or wider; the umask does not apply
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the first error is the one to report
            os.unlink(tmp)
        raise


def publish(path: Path, result: _nvrtc.CompileResult, *, shared: bool = False) -> None:
    """Publish the entry: its record, then the cubin (the module docstring says why in that order),
    private files, or (`shared`) files readable by all."""
    folder_mode, file_mode = SHARED_MODES if shared else PRIVATE_MODES
    path.parent.mkdir(parents=True, exist_ok=True, mode=folder_mode)
    digest = hashlib.sha256(result.cubin).hexdigest()
    record = {"size": len(result.cubin), "sha256": digest, "log": result.log}
    _write_atomically(record_path(path), json.dumps(record).encode(), file_mode)
    _write_atomically(path, result.cubin, file_mode)


def _distrust(status: os.stat_result, path: Path) -> str | None:
    """Why another user could have written the file or folder at `path` with this status (None: no
    one could). Where it is this user's, the reason ends with the command that fixes it."""
    if status.st_uid not in (os.geteuid(), 0):
        return f"is owned by another user (uid {status.st_uid})"
    if status.st_mode & 0o022:
        mode = stat.S_IMODE(status.st_mode)
        if status.st_uid != os.geteuid():  # root's, and this is not root: nothing to suggest
            return f"is writable by other users (mode {mode:o})"
        return f"is writable by other users (mode {mode:o}; it is yours: `chmod go-w {path}` fixes that)"
    return None


def _read_trusted(path: Path) -> bytes:
    """The file's bytes, its owner and mode checked on the open file itself."""
    with open(path, "rb") as f:
        if problem := _distrust(os.fstat(f.fileno()), path):
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


def _compiled(
    module: str, arch: str, directory: Path, root: Path | None = None, source: str | None = None
) -> tuple[Path, _nvrtc.CompileResult]:
    """The module compiled for `arch` (from `source`, default: the module's source now), not yet
    published, and the path of its entry in `directory`."""
    root, source = root or _sources.source_root(), source or _sources.source_file(module)
    path = cubin_path(module, arch, root, directory, source)
    return path, _nvrtc.compile_cubin(root / source, arch, include_dir=root, module=module)


def compile_module(
    module: str,
    arch: str,
    *,
    directory: Path,
    root: Path | None = None,
    source: str | None = None,
    shared: bool = False,
) -> tuple[Path, _nvrtc.CompileResult]:
    """Compile the module for `arch` (from `source`, default: the module's source now) and
    publish it into `directory` (`shared`: readable by all); the entry's path and the compile
    result. A failed publish raises its OSError."""
    path, result = _compiled(module, arch, directory, root, source)
    publish(path, result, shared=shared)
    return path, result


T = TypeVar("T")


def compile_all(
    builds: list[tuple[str, str]], workers: int, work: Callable[[str, str], T]
) -> Iterator[tuple[tuple[str, str], T, float]]:
    """Run `work(module, arch)` (a compile and publish) for every build, `workers` at a time
    (NVRTC runs outside the GIL), each in a copy of the caller's context (the overrides'
    sources). Yields each build as it finishes, with its value and seconds; an exception of
    `work` (a CompileError) surfaces here."""
    if not builds:
        return

    def timed(build: tuple[str, str]) -> tuple[T, float]:
        start = time.perf_counter()
        value = work(*build)
        return value, time.perf_counter() - start

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
_unwritable: set[Path] = set()  # folders a runtime publish failed in (each warned about once)


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
        folder.mkdir(parents=True, exist_ok=True, mode=PRIVATE_MODES[0])
        return _distrust(folder.stat(), folder)
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


def _publish_failed(path: Path, result: _nvrtc.CompileResult, error: OSError) -> None:
    """A runtime publish of `path` failed (a full disk, a quota, a read-only mount): the module is
    compiled, and its bytes serve this process (the caller keeps them in `_verified`). Says so
    once per folder; from the configured folder, the process moves to its private folder, as for
    an unwritable one, and publishes the entry there."""
    folder = path.parent
    try:
        private = private_dir()
    except OSError:
        private = folder  # no private folder either: what this process compiles stays in memory
    if folder not in _unwritable:
        _unwritable.add(folder)
        instead = (
            f"compiling into {private} for this process instead"
            if private != folder
            else "keeping what this process compiles in memory"
        )
        warnings.warn(
            f"moefuse: cannot publish into the kernel cache folder {folder} "
            f"({error.strerror or error}): {instead}",
            CacheWarning,
            stacklevel=3,
        )
    if private == folder:
        return
    configured = cache_dir()
    folders = _folders.get(configured)
    if folders is not None and folders.write == folder:
        read = (private, *(f for f in folders.read if f != private))
        _folders[configured] = _Folders(read=read, write=private)
    try:
        publish(private / path.name, result)
    except OSError as exc:
        _publish_failed(private / path.name, result, exc)


def _compile_unfailing(
    module: str, arch: str, directory: Path, source: str | None = None
) -> tuple[Path, _nvrtc.CompileResult, OSError | None]:
    """compile_module into `directory`, a failed publish returned instead of raised (for the
    caller's thread to handle): (path, result, OSError or None)."""
    path, result = _compiled(module, arch, directory, source=source)
    try:
        publish(path, result)
    except OSError as exc:
        return path, result, exc
    return path, result, None


def _compile_at_runtime(module: str, arch: str, source: str | None = None) -> _nvrtc.CompileResult:
    """The module compiled and published into the runtime's folder; a failed publish warns and
    moves this process to its private folder instead of raising."""
    path, result, error = _compile_unfailing(module, arch, _write_folder(), source)
    if error is not None:
        _publish_failed(path, result, error)
    return result


def _find(module: str, arch: str, source: str, *, warn: bool = True) -> _nvrtc.CompileResult | None:
    """The module's verified entry in the first of the runtime's folders that has one."""
    name = entry_name(module, arch, _sources.source_root(), source)
    for folder in _runtime_folders().read:
        found = cached(folder / name, warn=warn)
        if found is not None:
            return found
    return None


def compile_missing(arch: str, modules: list[str]) -> None:
    """Compile, in parallel, every one of `modules` that the runtime's folders lack or hold
    damaged (a cold start then costs about the slowest module instead of the sum). A cold start
    takes ~15 s on Hopper, so it says so on stderr, once at the start and once at the end. Keeps
    the bytes of every module it verifies or compiles in `_verified`."""
    root, missing = _sources.source_root(), []
    for module in modules:
        source = _sources.source_file(module)
        found = _find(module, arch, source)
        if found is None:
            missing.append(module)
        else:
            _verified[(module, arch, source, root)] = found.cubin
    if not missing:
        return
    directory = _write_folder()
    print(
        f"moefuse: compiling {len(missing)} kernel modules for {arch}, once (cached in {directory}) ...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    builds = [(m, arch) for m in missing]
    work = functools.partial(_compile_unfailing, directory=directory)
    for (module, _), (path, result, error), _ in compile_all(builds, len(builds), work):
        if error is not None:
            _publish_failed(path, result, error)
        _verified[(module, arch, _sources.source_file(module), root)] = result.cubin  # replaces a stale one
    print(f"moefuse: compiled in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


_loaded: dict[tuple, object] = {}
_functions: dict[tuple, object] = {}
_specs: dict[tuple, dict[str, _spec.KernelSpec]] = {}
# (module, arch, source, source root) -> the cubin read and checked, or compiled, in this process
_verified: dict[tuple, bytes] = {}
_lock = threading.Lock()


def _cubin(module: str, arch: str, source: str) -> bytes:
    """The module's verified cubin for `arch` from `source`, read and checked once per process.
    Where the cache lacks it, it compiles (compile_missing, for the context's source); that
    warns about a damaged entry, so the first look here does not (one warning per entry)."""
    key = (module, arch, source, _sources.source_root())
    if key not in _verified:
        found = _find(module, arch, source, warn=False)
        if found is None and source == _sources.source_file(module):
            compile_missing(arch, [module])  # keeps what it reads and compiles in _verified
        elif found is None:  # a source another context chose
            found = _find(module, arch, source) or _compile_at_runtime(module, arch, source)
        if found is not None:
            _verified[key] = found.cubin
    return _verified[key]


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


def catalog(arch: str, modules: list[str]) -> tuple[_spec.KernelSpec, ...]:
    """Every kernel of `modules` for `arch`; the modules not yet read are compiled first, in one
    parallel pass, where missing."""
    with _lock:  # one thread compiles; module_specs takes the lock after
        unread = [m for m in modules if (m, _sources.source_file(m), arch) not in _specs]
        if unread:
            compile_missing(arch, unread)
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
