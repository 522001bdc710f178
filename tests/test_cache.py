"""The compile cache survives faults: damaged, untrusted and racing entries, unusable folders,
compile errors. No GPU needed.

Entries come from the session's `compiled` folder (every module built once per run). A test that
must compile compiles "permute" (the smallest module, ~0.4 s), or "routing" beside it (~1 s), and
its docstring says so.
"""

import errno
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import warnings

import pytest

import moefuse
from moefuse import _cache, _nvrtc, _sources

ARCH = "sm_80"  # three modules: a runtime cold start in a seeded folder compiles only what a test removes


def copy_entries(compiled, folder, modules, arch=ARCH):
    """The session's entries of `modules` for `arch`, cubin and record, copied into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for module in modules:
        cubin = compiled[(arch, module)][0]
        for path in (cubin, _cache.record_path(cubin)):
            shutil.copy2(path, folder / path.name)
    return folder


def entry(folder, module, arch=ARCH):
    return _cache.cubin_path(module, arch, _sources.source_root(), folder)


def cache_warnings(call):
    """`call()`'s value and the messages of the CacheWarnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = call()
    return value, [str(w.message) for w in caught if issubclass(w.category, _cache.CacheWarning)]


@pytest.fixture
def runtime(monkeypatch):
    """The runtime's memos emptied (launch contracts, verified cubins, this process's private
    folder, folders a publish failed in) for a test that points MOEFUSE_CACHE_DIR somewhere."""
    monkeypatch.setattr(_cache, "_specs", {})
    monkeypatch.setattr(_cache, "_verified", {})
    monkeypatch.setattr(_cache, "_private", {})
    monkeypatch.setattr(_cache, "_unwritable", set())


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


def test_an_entry_is_a_plain_cubin_and_a_record_of_its_size_digest_and_log(compiled):
    path, result = compiled[(ARCH, "permute")]
    record = json.loads(_cache.record_path(path).read_text())
    assert path.read_bytes() == result.cubin
    assert record == {
        "size": len(result.cubin),
        "sha256": hashlib.sha256(result.cubin).hexdigest(),
        "log": result.log,
    }
    assert _cache.read_entry(path) == result
    assert {p.name for p in path.parent.iterdir() if ".tmp" in p.name} == set()  # no temporary files left


def test_publish_creates_a_private_folder_and_private_files(compiled, tmp_path):
    result = compiled[(ARCH, "permute")][1]
    path = tmp_path / "new" / "entry.cubin"
    _cache.publish(path, result)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for published in (path, _cache.record_path(path)):
        assert stat.S_IMODE(published.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["entry.cubin", "entry.cubin.json"]


def test_a_record_without_its_cubin_is_no_entry(compiled, tmp_path):
    """What a publish cut short between its two renames leaves (the record goes first)."""
    cubin = entry(copy_entries(compiled, tmp_path, ["permute"]), "permute")
    cubin.unlink()
    assert cache_warnings(lambda: _cache.cached(cubin)) == (None, [])


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def remove_the_record(path):
    _cache.record_path(path).unlink()


def garble_the_record(path):
    _cache.record_path(path).write_text('{"size": ')


def let_others_write(path):
    path.chmod(0o666)


def let_others_write_the_record(path):
    _cache.record_path(path).chmod(0o664)


DAMAGE = {
    truncate: "its record says",
    flip_a_byte: "does not match its record's SHA-256",
    remove_the_record: "has no record",
    garble_the_record: "has a malformed record",
    let_others_write: "is writable by other users (mode 666; it is yours: `chmod go-w {cubin}` fixes that)",
    let_others_write_the_record: "has a record that is writable by other users (mode 664; it is yours: "
    "`chmod go-w {cubin}.json` fixes that)",
}


@pytest.mark.parametrize("damage", DAMAGE, ids=[d.__name__ for d in DAMAGE])
def test_a_damaged_entry_is_compiled_again_with_one_warning(compiled, tmp_path, monkeypatch, runtime, damage):
    """The runtime's path (launch contracts read at first use), in a warm folder whose permute
    entry is damaged: permute compiles once more, here, per kind of damage."""
    folder = copy_entries(compiled, tmp_path / "cache", _sources.modules_for(ARCH))
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    path = entry(folder, "permute")
    damage(path)
    specs, said = cache_warnings(lambda: _cache.module_specs("permute", ARCH))
    assert len(said) == 1, said
    assert str(path) in said[0] and DAMAGE[damage].format(cubin=path) in said[0]
    assert specs and all(spec.module == "permute" for spec in specs.values())
    assert _cache.read_entry(path).cubin == compiled[(ARCH, "permute")][1].cubin  # republished, verified
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    warm = _sources.modules_for(ARCH)
    assert cache_warnings(lambda: _cache.compile_missing(ARCH, warm)) == (None, [])  # warm again


def test_a_cold_cache_compiles_every_module_it_lacks_at_once(tmp_path, monkeypatch, capsys, runtime):
    """A cold start of two modules (routing and permute, ~1.5 s: the arch's third, the GEMM, is
    left out to keep CI short); the folder is created private."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    _cache.compile_missing(ARCH, ["routing", "permute"])
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for module in ("routing", "permute"):
        assert _cache.read_entry(entry(folder, module)) is not None
    said = capsys.readouterr().err
    assert f"compiling 2 kernel modules for {ARCH}" in said and "compiled in" in said
    _cache.compile_missing(ARCH, ["routing", "permute"])  # warm: nothing to compile, nothing said
    assert capsys.readouterr().err == ""


RACE = """
import sys, time
from pathlib import Path
from moefuse import _cache
folder, mine, theirs = (Path(a) for a in sys.argv[1:])
mine.touch()
while not theirs.exists():  # start compiling together
    time.sleep(0.001)
print(_cache.compile_module("permute", "sm_80", directory=folder)[0])
"""


def test_two_processes_compiling_the_same_entry_at_once_both_succeed(compiled, tmp_path):
    """Two interpreters (~1 s each to import, in parallel) compile permute into the same new
    folder at the same moment: both succeed and leave one valid entry, no temporary files."""
    folder, ready = tmp_path / "cache", [tmp_path / "ready-a", tmp_path / "ready-b"]
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACE, str(folder), str(mine), str(theirs)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for mine, theirs in (ready, ready[::-1])
    ]
    outputs = [racer.communicate(timeout=120) for racer in racers]
    assert [racer.returncode for racer in racers] == [0, 0], outputs
    path = entry(folder, "permute")
    assert {out.strip() for out, _ in outputs} == {str(path)}
    # NVRTC's output is deterministic: racing publishers write the same bytes
    assert _cache.read_entry(path).cubin == compiled[(ARCH, "permute")][1].cubin
    assert sorted(p.name for p in folder.iterdir()) == [path.name, path.name + ".json"]


def planted(folder):
    """`folder` with a permute entry that matches its record but is no cubin."""
    _cache.publish(entry(folder, "permute"), _nvrtc.CompileResult(cubin=b"planted", log=""))
    return folder


def open_to_others(tmp_path):
    folder = tmp_path / "cache"
    planted(folder).chmod(0o777)
    return folder, f"is writable by other users (mode 777; it is yours: `chmod go-w {folder}` fixes that)"


def another_users(tmp_path):
    os.chown(planted(tmp_path / "cache"), 65534, 65534)
    return tmp_path / "cache", "is owned by another user (uid 65534)"


def under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("")
    return tmp_path / "file" / "cache", "cannot be created (Not a directory)"


def in_a_read_only_folder(tmp_path):
    (tmp_path / "parent").mkdir(mode=0o555)
    return tmp_path / "parent" / "cache", "cannot be created (Permission denied)"


def _permissions_bind() -> bool:
    """Whether a read-only folder stops this process (root, unless its capabilities were
    dropped, writes anyway)."""
    with tempfile.TemporaryDirectory() as folder:
        os.chmod(folder, 0o555)
        return not os.access(folder, os.W_OK)


PERMISSIONS_BIND = _permissions_bind()


@pytest.mark.parametrize(
    "make_unusable",
    [
        open_to_others,
        under_a_regular_file,
        pytest.param(in_a_read_only_folder, marks=pytest.mark.skipif(not PERMISSIONS_BIND, reason="root")),
        pytest.param(another_users, marks=pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")),
    ],
    ids=lambda f: f.__name__,
)
def test_an_unusable_cache_folder_gives_way_to_a_private_one(tmp_path, monkeypatch, runtime, make_unusable):
    """The runtime compiles into this process's private folder, with one warning naming both;
    an entry in the unusable folder is never read. Compiles permute (~0.4 s)."""
    folder, problem = make_unusable(tmp_path)
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    specs, said = cache_warnings(lambda: _cache.module_specs("permute", ARCH))
    private = _cache.private_dir()
    assert len(said) == 1 and str(folder) in said[0] and str(private) in said[0] and problem in said[0], said
    assert specs  # bytes planted in the unusable folder would not parse
    assert _cache.read_entry(entry(private, "permute")) is not None
    assert stat.S_IMODE(private.stat().st_mode) == 0o700


@pytest.mark.skipif(not PERMISSIONS_BIND, reason="root writes into a read-only folder anyway")
def test_a_read_only_cache_folder_is_read_and_what_it_lacks_compiles_privately(
    compiled, tmp_path, monkeypatch, runtime
):
    """A pre-built cache this user cannot write: its entries are used as they are; permute, which
    it lacks, compiles (~0.4 s) into the private folder, with one warning naming both."""
    folder = copy_entries(compiled, tmp_path / "cache", ["routing", "sm80_grouped_gemm"])
    folder.chmod(0o555)
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    _, said = cache_warnings(lambda: [_cache.module_specs(m, ARCH) for m in _sources.modules_for(ARCH)])
    private = _cache.private_dir()
    assert len(said) == 1 and str(folder) in said[0] and str(private) in said[0] and "not writable" in said[0]
    assert [p.name.split("-")[0] for p in private.glob("*.cubin")] == ["permute"]


def test_compile_missing_raises_the_compile_error_of_any_module(tmp_path, monkeypatch, runtime):
    """Two tiny sources under a source root of their own, one broken, chosen through
    moefuse.override: the error surfaces from the thread pool naming its module, and the other
    module is still published."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "tiny.cu").write_text('extern "C" __global__ void k(int* p) { p[0] = 1; }\n')
    (root / "broken.cu").write_text('extern "C" __global__ void k() { undefined_thing(); }\n')
    monkeypatch.setattr(_sources, "source_root", lambda: root)
    monkeypatch.setenv(_cache.CACHE_ENV, str(tmp_path / "cache"))
    broken = r"(?s)module permute \(.*broken.cu\) for sm_80:\n.*undefined_thing"
    with (
        moefuse.override(sources={"routing": "tiny.cu", "permute": "broken.cu"}),
        pytest.raises(_nvrtc.CompileError, match=broken),
    ):
        _cache.compile_missing(ARCH, ["routing", "permute"])
    assert _cache.read_entry(_cache.cubin_path("routing", ARCH, root, tmp_path / "cache", "tiny.cu"))


def test_a_group_writable_folder_of_yours_is_refused_with_the_command_that_fixes_it(
    compiled, tmp_path, monkeypatch, runtime
):
    """A warm cache folder made by a plain `mkdir` under umask 002 (mode 775): not used, and the
    warning names `chmod go-w` on it (moefuse does not change it); once that is run, a new process
    uses it as it is. Compiles permute (~0.4 s) into the private folder."""
    folder = tmp_path / "cache"
    old = os.umask(0o002)
    try:
        folder.mkdir()
    finally:
        os.umask(old)
    copy_entries(compiled, folder, ["permute"])
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    _, said = cache_warnings(lambda: _cache.module_specs("permute", ARCH))
    assert len(said) == 1 and f"(mode 775; it is yours: `chmod go-w {folder}` fixes that)" in said[0], said
    assert stat.S_IMODE(folder.stat().st_mode) == 0o775  # left as it was
    subprocess.run(["chmod", "go-w", str(folder)], check=True)  # the command the warning names
    monkeypatch.setattr(_cache, "_folders", {})  # a new process
    monkeypatch.setattr(_cache, "_specs", {})
    monkeypatch.setattr(_cache, "_verified", {})
    assert cache_warnings(lambda: _cache.module_specs("permute", ARCH))[1] == []
    assert _cache._runtime_folders().read == (folder,)


def test_the_command_is_named_only_for_a_file_or_folder_of_this_user(monkeypatch):
    """Root's group-writable folder, seen by another user, has no command that user could run."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    folder = tempfile.gettempdir()

    def status(uid, mode):
        return os.stat_result((stat.S_IFDIR | mode, 0, 0, 1, uid, uid, 0, 0, 0, 0))

    assert _cache._distrust(status(1000, 0o775), folder).endswith(f"`chmod go-w {folder}` fixes that)")
    assert _cache._distrust(status(0, 0o775), folder) == "is writable by other users (mode 775)"
    assert _cache._distrust(status(0, 0o755), folder) is None
    assert _cache._distrust(status(1001, 0o755), folder) == "is owned by another user (uid 1001)"


def failing_replace(monkeypatch, failing):
    """os.replace raising ENOSPC (a full disk) for every target whose folder `failing` accepts."""
    replace = os.replace

    def full(src, dst, **kwargs):
        if failing(os.path.dirname(dst)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)
        return replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", full)


def test_a_failed_publish_at_run_time_moves_the_process_to_its_private_folder(
    compiled, tmp_path, monkeypatch, runtime
):
    """The disk of the cache folder is full (os.access still calls it writable): permute, compiled
    (~0.4 s), serves the call and is published into the private folder, with one warning naming
    the folder and the error; later compiles go there directly, silently. No temporary file is
    left behind."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    failing_replace(monkeypatch, lambda parent: parent == str(folder))
    specs, said = cache_warnings(lambda: _cache.module_specs("permute", ARCH))
    private = _cache.private_dir()
    assert len(said) == 1, said
    assert f"cannot publish into the kernel cache folder {folder} (No space left on device)" in said[0]
    assert f"compiling into {private} for this process instead" in said[0]
    assert specs and all(spec.module == "permute" for spec in specs.values())
    assert list(folder.iterdir()) == []  # the record's publish failed first; its temporary file is gone
    path = entry(private, "permute")
    assert _cache.read_entry(path).cubin == compiled[(ARCH, "permute")][1].cubin
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _cache._runtime_folders() == _cache._Folders(read=(private, folder), write=private)
    path.unlink()  # the next compile of this process goes straight to the private folder
    monkeypatch.setattr(_cache, "_verified", {})
    assert cache_warnings(lambda: _cache._cubin("permute", ARCH, "permute.cu"))[1] == []
    assert _cache.read_entry(path) is not None


def test_where_the_private_folder_fails_too_the_compiled_module_serves_from_memory(
    compiled, tmp_path, monkeypatch, runtime
):
    """Every disk is full: permute (~0.4 s) still serves the call, from the compiled bytes, with
    one warning per folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    failing_replace(monkeypatch, lambda parent: True)
    specs, said = cache_warnings(lambda: _cache.module_specs("permute", ARCH))
    private = _cache.private_dir()
    assert len(said) == 2 and str(folder) in said[0], said
    assert f"cannot publish into the kernel cache folder {private} (No space left on device)" in said[1]
    assert "keeping what this process compiles in memory" in said[1]
    assert specs
    assert _cache._cubin("permute", ARCH, "permute.cu") == compiled[(ARCH, "permute")][1].cubin
    assert list(folder.iterdir()) == list(private.iterdir()) == []


def test_a_module_is_read_and_checked_once_per_process(compiled, tmp_path, monkeypatch, runtime):
    """Its launch contracts and its load on each device take the same verified bytes, read once;
    a module compiled again replaces them (permute, ~0.4 s)."""
    folder = copy_entries(compiled, tmp_path / "cache", _sources.modules_for(ARCH))
    monkeypatch.setenv(_cache.CACHE_ENV, str(folder))
    reads = []
    read_entry = _cache.read_entry
    monkeypatch.setattr(_cache, "read_entry", lambda path: reads.append(path) or read_entry(path))
    _cache.module_specs("permute", ARCH)
    for _ in range(3):  # what load_function loads, on each of three devices
        assert _cache._cubin("permute", ARCH, "permute.cu") == compiled[(ARCH, "permute")][1].cubin
    assert reads == [entry(folder, "permute")]
    key = ("permute", ARCH, "permute.cu", _sources.source_root())
    _cache._verified[key] = b"stale"
    entry(folder, "permute").unlink()
    _cache.compile_missing(ARCH, ["permute"])
    assert _cache._verified[key] == compiled[(ARCH, "permute")][1].cubin
