"""`python -m moefuse.precompile`: it skips what its folder holds, rejects targets it cannot build,
and prints a legible table. No GPU needed.

Run against the session's `compiled` folder, the command compiles nothing; a test that must
compile compiles "permute" (~0.4 s) and says so.
"""

import subprocess
import sys

import pytest

import moefuse
from moefuse import _cache, _nvrtc, _sources, precompile
from tests.conftest import ARCHS
from tests.test_cache import copy_entries, entry


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
