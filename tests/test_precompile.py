"""`python -m moefuse.precompile`: it skips what its folder holds, rejects targets it cannot build,
and prints a legible table. No GPU needed.

Run against the session's `compiled` folder, the command compiles nothing; a test that must
compile compiles "permute" (~0.4 s) and says so.
"""

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import moefuse
from moefuse import _cache, _nvrtc, _sources, _spec, precompile
from tests.conftest import ARCHS
from tests.test_cache import cache_warnings, copy_entries, entry, failing_replace


def session_folder(compiled):
    (folder,) = {path.parent for path, _ in compiled.values()}
    return folder


def test_a_second_run_compiles_nothing_and_prints_the_same_table(compiled):
    """The session's folder holds every module of every target (the first run): the command
    only verifies the entries and prints each kernel's resources from their records."""
    folder = session_folder(compiled)
    before = {path: path.stat().st_mtime_ns for path in folder.iterdir()}
    proc = subprocess.run(
        [sys.executable, "-m", "moefuse.precompile", "--arch", *ARCHS, "--out", str(folder)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert {path: path.stat().st_mtime_ns for path in folder.iterdir()} == before  # nothing written
    progress = proc.stderr.splitlines()
    assert len(progress) == len(compiled) and all(line.endswith(": cached") for line in progress)
    reported = [
        (arch, kernel, res)
        for arch in ARCHS
        for module in _sources.modules_for(arch)
        for kernel, res in sorted(_nvrtc.parse_resources(compiled[(arch, module)][1].log).items())
    ]
    lines = proc.stdout.splitlines()
    assert lines[: 1 + len(reported)] == precompile.table(reported)  # as the compiles reported them
    summary = lines[-1]
    assert f"(0 compiled, {len(compiled)} cached)" in summary and summary.endswith("0 spill registers")


def test_the_table_puts_the_kernel_name_last():
    res = _nvrtc.KernelResources(
        registers=168, static_smem_bytes=1024, stack_bytes=0, spill_store_bytes=0, spill_load_bytes=0
    )
    long_name = "gemm2_scatter_swapped_wide_bf16_out_f32_with_a_name_longer_than_any_column"
    header, short, long = precompile.table([("sm_90a", "k", res), ("sm_100a", long_name, res)])
    assert header.endswith("  kernel") and short.endswith("  k") and long.endswith(f"  {long_name}")
    assert short[: -len("k")].split() == ["sm_90a", "168", "1024", "0", "0", "0"]
    assert len(header) - len("kernel") == len(short) - len("k") == len(long) - len(long_name)  # aligned


@pytest.mark.parametrize(
    "arch, hint", [("sm_90", "sm_90a"), ("sm_100", "sm_100a"), ("sm_75", None), ("hopper", None)]
)
def test_an_unsupported_architecture_is_a_usage_error(tmp_path, capsys, arch, hint):
    with pytest.raises(SystemExit) as exited:
        precompile.main(["--arch", "sm_80", arch, "--out", str(tmp_path / "out")])
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert f"unsupported architecture {arch}." in said
    assert "sm_80 " in said and "sm_90a" in said and "sm_100a" in said  # the supported ones
    assert "an H100 or H200 needs --arch sm_90a, a B200 --arch sm_100a" in said
    if hint:
        assert f"{arch} lacks the 'a'" in said and f"architecture-specific {hint}." in said
    assert not (tmp_path / "out").exists()


def test_force_compiles_what_is_cached(compiled, tmp_path, monkeypatch, capsys):
    """Compiles permute once more (~0.4 s)."""
    monkeypatch.setattr(_sources, "modules_for", lambda arch: ["permute"])
    folder = copy_entries(compiled, tmp_path, ["permute"])
    assert precompile.main(["--arch", "sm_80", "--out", str(folder), "--force"]) == 0
    out, err = capsys.readouterr()
    assert "permute: compiled in" in err and "(1 compiled, 0 cached)" in out


def test_a_damaged_entry_in_the_folder_is_compiled_again_with_one_warning(compiled, tmp_path):
    """Compiles permute once more (~0.4 s)."""
    folder = copy_entries(compiled, tmp_path, _sources.modules_for("sm_80"))
    path = entry(folder, "permute")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(_cache.CacheWarning, match="permute") as said:
        built = precompile.precompile(["sm_80"], folder)
    assert len(said) == 1 and str(path) in str(said[0].message)
    assert [(b.module, b.compiled) for b in built] == [
        (m, m == "permute") for m in _sources.modules_for("sm_80")
    ]
    assert _cache.read_entry(path).cubin == compiled[("sm_80", "permute")][1].cubin


def test_a_compile_error_exits_1_naming_the_module(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken.cu").write_text('extern "C" __global__ void k() { undefined_thing(); }\n')
    monkeypatch.setattr(_sources, "source_root", lambda: tmp_path)
    monkeypatch.setattr(_sources, "modules_for", lambda arch: ["permute"])
    with moefuse.override(sources={"permute": "broken.cu"}):
        assert precompile.main(["--arch", "sm_80", "--out", str(tmp_path / "out")]) == 1
    said = capsys.readouterr().err
    assert "module permute" in said and "sm_80" in said and "undefined_thing" in said


def test_an_unusable_out_folder_exits_1(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert precompile.main(["--arch", "sm_80", "--out", str(tmp_path / "file" / "out")]) == 1
    assert "Not a directory" in capsys.readouterr().err


def modes(folder):
    """The mode of `folder` and of each file in it."""
    return {path.name: stat.S_IMODE(path.stat().st_mode) for path in (folder, *folder.iterdir())}


def test_out_is_a_cache_every_user_can_read_and_only_its_owner_write(compiled, tmp_path, monkeypatch):
    """--out DIR: a new DIR (and the folder above it) 0755, entries 0644, whatever the umask (077
    here), so that a cache built by root in an image serves the non-root user who runs the
    model; trusted by the runtime. The default folder stays private. Compiles permute twice
    (~0.8 s)."""
    monkeypatch.setattr(_sources, "modules_for", lambda arch: ["permute"])
    out, default = tmp_path / "image" / "cache", tmp_path / "home" / "cache"
    monkeypatch.setenv(_cache.CACHE_ENV, str(default))
    old = os.umask(0o077)
    try:
        assert precompile.main(["--arch", "sm_80", "--out", str(out)]) == 0
        assert precompile.main(["--arch", "sm_80"]) == 0
    finally:
        os.umask(old)
    path = entry(out, "permute")
    assert modes(out) == {"cache": 0o755, path.name: 0o644, f"{path.name}.json": 0o644}
    assert stat.S_IMODE(out.parent.stat().st_mode) == 0o755  # made here too: other users pass through
    assert modes(default) == {"cache": 0o700, path.name: 0o600, f"{path.name}.json": 0o600}
    for published in (out, path, _cache.record_path(path)):
        assert _cache._distrust(published.stat(), published) is None
    assert _cache.read_entry(path).cubin == compiled[("sm_80", "permute")][1].cubin


NOBODY = 65534


def as_nobody(call):
    """`call()`'s repr, or its exception's, from a forked child that runs as user and group
    65534, with no other groups (it imports nothing new: the interpreter lies under /root)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            said = repr(call())
        except BaseException as exc:
            said = f"raised {exc!r}"
        os.write(write, said.encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        said = pipe.read()
    os.waitpid(pid, 0)
    return said


@pytest.mark.skipif(os.geteuid() != 0, reason="becoming another user needs root")
def test_a_cache_precompiled_by_root_serves_another_user_as_it_is(compiled, monkeypatch):
    """Root fills --out DIR; user 65534 points MOEFUSE_CACHE_DIR at it: every entry is read and
    verified, nothing is compiled, no warning, no private folder. Compiles permute (~0.4 s)."""
    monkeypatch.setattr(_sources, "modules_for", lambda arch: ["permute"])
    base = Path(tempfile.mkdtemp())  # pytest's tmp_path lies under a folder of mode 0700
    try:
        base.chmod(0o755)
        out = base / "cache"
        assert precompile.main(["--arch", "sm_80", "--out", str(out)]) == 0
        monkeypatch.setenv(_cache.CACHE_ENV, str(out))
        for memo in ("_specs", "_verified", "_private", "_folders"):
            monkeypatch.setattr(_cache, memo, {})
        _cache.module_specs("permute", "sm_80")  # as root, so that the child imports nothing
        for memo in ("_specs", "_verified", "_private", "_folders"):
            monkeypatch.setattr(_cache, memo, {})

        def serve():
            specs, said = cache_warnings(lambda: _cache.module_specs("permute", "sm_80"))
            return os.geteuid(), sorted(specs), said, _cache._private, _cache._runtime_folders()

        expected = (
            NOBODY,
            sorted(_spec.read_specs(compiled[("sm_80", "permute")][1].cubin, "permute", "permute.cu")),
            [],
            {},
            _cache._Folders(read=(out,), write=None),  # read-only to this user, trusted
        )
        assert as_nobody(serve) == repr(expected)
    finally:
        shutil.rmtree(base)


def test_an_out_folder_the_runtime_would_not_trust_is_filled_with_a_warning_naming_the_fix(
    compiled, tmp_path
):
    """An existing DIR keeps its mode: the command warns, as the runtime would, and names the fix."""
    folder = copy_entries(compiled, tmp_path / "cache", _sources.modules_for("sm_80"))
    folder.chmod(0o775)
    with pytest.warns(_cache.CacheWarning) as said:
        built = precompile.precompile(["sm_80"], folder, shared=True)
    assert len(said) == 1
    assert str(said[0].message) == (
        f"moefuse: the runtime will not use {folder} as its cache folder: it is writable by other "
        f"users (mode 775; it is yours: `chmod go-w {folder}` fixes that)"
    )
    assert not any(b.compiled for b in built) and stat.S_IMODE(folder.stat().st_mode) == 0o775


def test_a_failed_publish_exits_1_naming_the_error(tmp_path, monkeypatch, capsys):
    """Unlike the runtime, the command fails on a full disk. Compiles permute (~0.4 s)."""
    monkeypatch.setattr(_sources, "modules_for", lambda arch: ["permute"])
    failing_replace(monkeypatch, lambda parent: True)
    assert precompile.main(["--arch", "sm_80", "--out", str(tmp_path / "out")]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []
