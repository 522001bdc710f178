"""Without a usable GPU, moefuse and bench.py say what was found, what is needed and what works
anyway: `diagnose` on fake observations (every branch, no GPU needed), then the real thing."""

import importlib.util
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

import moefuse
from moefuse import _device
from moefuse._device import Observations, cuda_version, diagnose
from tests.conftest import GPU

ROOT = Path(__file__).resolve().parent.parent

NO_DRIVER = Observations(
    failure="cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version",
    error_code=35,
)
UNUSABLE = {
    "no driver": (NO_DRIVER, ["no NVIDIA driver", "libcuda.so.1", "cudaErrorInsufficientDriver"]),
    "libcuda not loadable": (
        Observations(failure="RuntimeError: Failed to dlopen libcuda.so.1"),
        ["no NVIDIA driver", "Failed to dlopen libcuda.so.1"],
    ),
    "driver too old": (
        Observations(failure=NO_DRIVER.failure, error_code=35, driver_version=12040),
        ["supports CUDA 12.4", "driver version 12040", "CUDA 13.0 (13000) needed"],
    ),
    "no device": (
        Observations(
            failure="cudaErrorNoDevice: no CUDA-capable device is detected",
            error_code=100,
            driver_version=13000,
        ),
        ["driver (CUDA 13.0) reports no GPU"],
    ),
    "no device visible": (
        Observations(failure="cudaErrorNoDevice", error_code=100, driver_version=13000, visible_devices=""),
        ["reports no GPU with CUDA_VISIBLE_DEVICES=''"],
    ),
    "zero devices": (Observations(driver_version=13020), ["driver (CUDA 13.2) reports no GPU"]),
    "capability too low": (
        Observations(
            driver_version=13000,
            device_count=2,
            device_id=1,
            device_name="Tesla V100-SXM2-16GB",
            capability=(7, 0),
        ),
        ["GPU 1 (Tesla V100-SXM2-16GB) has compute capability 7.0"],
    ),
    "other CUDA failure": (
        Observations(
            failure="cudaErrorDevicesUnavailable: CUDA-capable device(s) is/are busy or unavailable",
            error_code=46,
            driver_version=13000,
        ),
        ["CUDA could not use the GPU (driver for CUDA 13.0)", "cudaErrorDevicesUnavailable"],
    ),
    "recent driver, still insufficient": (
        Observations(failure=NO_DRIVER.failure, error_code=35, driver_version=13000),
        ["CUDA could not use the GPU (driver for CUDA 13.0)", "cudaErrorInsufficientDriver"],
    ),
}


@pytest.mark.parametrize("obs, found", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_diagnosis_says_what_was_found(obs, found):
    first_line = diagnose(obs).splitlines()[0]
    assert first_line.startswith("no usable NVIDIA GPU: ")
    for words in found:
        assert words in first_line


@pytest.mark.parametrize("obs", [obs for obs, _ in UNUSABLE.values()], ids=UNUSABLE.keys())
def test_diagnosis_says_what_is_needed_and_what_works_without_a_gpu(obs):
    message = diagnose(obs)
    assert "compute capability 8.0 or newer" in message and "CUDA 13.0 or newer" in message
    assert "the tests still run" in message and "python -m moefuse.precompile --arch" in message


@pytest.mark.parametrize("capability", [(8, 0), (8, 9), (9, 0), (10, 0)])
def test_a_gpu_of_compute_capability_8_or_newer_is_usable(capability):
    assert diagnose(Observations(driver_version=13000, device_count=1, capability=capability)) is None


@pytest.mark.parametrize(
    "version, text", [(13000, "13.0"), (12040, "12.4"), (13020, "13.2"), (11080, "11.8")]
)
def test_cuda_version_of_a_driver_version(version, text):
    assert cuda_version(version) == text


def test_no_gpu_error_is_moefuse_no_gpu_error():
    assert moefuse.NoGPUError is _device.NoGPUError and issubclass(moefuse.NoGPUError, RuntimeError)
    assert repr(moefuse.NoGPUError) == "<class 'moefuse.NoGPUError'>"
    assert f"{moefuse.NoGPUError.__module__}.{moefuse.NoGPUError.__qualname__}" == "moefuse.NoGPUError"
    error = pickle.loads(pickle.dumps(moefuse.NoGPUError("why")))
    assert type(error) is moefuse.NoGPUError and str(error) == "why"


@pytest.mark.skipif(GPU, reason="this machine has a GPU")
def test_without_a_gpu_gpu_functions_raise_the_diagnosis_of_this_machine():
    with pytest.raises(moefuse.NoGPUError) as raised:
        moefuse.gpu_name()
    assert str(raised.value) == diagnose(_device.observe())
    assert str(raised.value).startswith("no usable NVIDIA GPU: ")


@pytest.mark.gpu
def test_observations_of_a_usable_gpu_diagnose_nothing():
    obs = _device.observe()
    assert obs.device_count > 0 and obs.driver_version >= _device.MIN_DRIVER_VERSION
    assert diagnose(obs) is None


@pytest.mark.gpu
def test_require_gpu_asks_the_driver_nothing_more_once_it_has_answered(monkeypatch):
    import cupy

    device_id = _device.require_gpu()

    def refuse(*args):
        raise AssertionError("require_gpu asked the driver again")

    for name in ("getDeviceCount", "getDeviceProperties", "driverGetVersion"):
        monkeypatch.setattr(cupy.cuda.runtime, name, refuse)
    monkeypatch.setattr(_device, "observe", refuse)
    assert _device.require_gpu() == device_id


def load_bench():
    spec = importlib.util.spec_from_file_location("bench", ROOT / "bench.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def run_bench(*args: str) -> subprocess.CompletedProcess:
    """bench.py in a fresh interpreter that sees no GPU (CUDA_VISIBLE_DEVICES="" hides any)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    command = [sys.executable, str(ROOT / "bench.py"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=False)


def test_bench_without_a_gpu_says_why_and_exits_with_its_own_status():
    proc = run_bench("--shape", "qwen3", "--tokens", "1")
    assert proc.returncode == load_bench().EXIT_NO_GPU == 3, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert "no usable NVIDIA GPU" in proc.stderr and "compute capability 8.0" in proc.stderr
    assert "python -m moefuse.precompile" in proc.stderr


def test_bench_usage_error_exits_2():
    proc = run_bench("--bad-flag")
    assert proc.returncode == 2 and "unrecognized arguments: --bad-flag" in proc.stderr
