"""`python -m moefuse.info` runs anywhere (no GPU, no NVML), exits 0 and prints its key lines."""

import os
import re
import subprocess
import sys
from pathlib import Path

import moefuse
from moefuse import _cache, _nvrtc, _sources, info
from tests.test_readme import requirements

ROOT = Path(__file__).resolve().parent.parent


def run_info(cache: Path, *, hide_nvml: bool = False) -> subprocess.CompletedProcess:
    """The module in a fresh interpreter with `cache` as its cache folder; `hide_nvml` makes
    `import pynvml` fail, as where nvidia-ml-py is missing."""
    hide = "import sys; sys.modules['pynvml'] = None; " if hide_nvml else ""
    code = f"{hide}import runpy; runpy.run_module('moefuse.info', run_name='__main__')"
    env = {**os.environ, _cache.CACHE_ENV: str(cache)}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_info_prints_versions_gpus_driver_nvrtc_cache_and_kernel_families(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    current = cache / _cache.entry_name("routing", "sm_90a", _sources.source_root())
    current.write_bytes(b"\0" * 2048)
    _cache.record_path(current).write_text("{}")
    (cache / "permute-sm_90a-0123456789abcdef01234567.cubin").write_bytes(b"\0")  # other sources
    proc = run_info(cache)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith(f"moefuse {moefuse.__version__} ")
    assert re.search(r"^driver: ", out, re.M)
    assert re.search(r"^GPU( \d+:|: no usable NVIDIA GPU)", out, re.M)  # each GPU, or why none
    assert f"NVRTC {_nvrtc.nvrtc_version()} (cuda.bindings); builds for sm_80 " in out
    assert f"kernel cache: {cache} (${_cache.CACHE_ENV})" in out
    assert "  2 entries, 0.0 MiB" in out
    assert "  sm_90a: 1 of " in out and "(routing)" in out
    assert "  1 entries of other sources, NVRTC versions or options" in out
    for support in info.ARCH_SUPPORT:  # the whole table, every architecture's status
        assert f"  {support.arch:8} {support.gpus}" in out and support.hardware in out


def test_info_without_nvml_or_cache_says_so(tmp_path):
    proc = run_info(tmp_path / "absent", hide_nvml=True)
    assert proc.returncode == 0, proc.stderr
    assert "nvidia-ml-py" in proc.stdout  # what to install for the clocks and power
    assert "empty: it does not exist yet" in proc.stdout


def test_the_table_is_honest_about_what_never_ran():
    blackwell = info.arch_support("sm_100a")
    assert "not implemented" in blackwell.kernels and "never run" in blackwell.hardware
    assert "never run" in info.arch_support("sm_80").hardware  # no A100 was available
    assert "H100" in info.arch_support("sm_90a").hardware
    other = info.arch_support("sm_86")  # not in the table: the portable kernels, never built here
    assert other.arch == "sm_86" and "portable" in other.kernels and "never" in other.hardware


def test_telemetry_reads_as_one_line():
    reading = info.Telemetry(1980, 1980, 2619, 2619, 85.4, 700.0, 34, ("power cap",))
    assert str(reading) == (
        "SM 1980/1980 MHz, memory 2619/2619 MHz (current/max), power 85/700 W (draw/limit), 34 C, "
        "clocks held by: power cap"
    )
    assert str(info.Telemetry(None, None, None, None, None, None, None, ())).startswith("SM ?/? MHz")


def test_nvml_comes_with_the_package():
    assert "nvidia-ml-py" in requirements()[""]  # info and bench.py read clocks and power through it
