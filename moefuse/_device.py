"""The GPU: whether there is one (and if not, why not), which architecture to compile for, the
current stream.

`require_gpu` is on every forward's path, so it asks CUDA once per process (the device count
and each device's compute capability are memoized); only when it fails does `observe` ask the
driver more, for `diagnose` to explain. `diagnose` is a pure function of those observations.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache


class NoGPUError(RuntimeError):
    """Raised by every GPU function when no usable NVIDIA GPU is present. The message says what
    was found, what moefuse needs, and what works without a GPU."""

    __module__ = "moefuse"  # raised and documented as moefuse.NoGPUError


MIN_COMPUTE_CAPABILITY = (8, 0)
MIN_DRIVER_VERSION = 13000  # cudaDriverGetVersion of a CUDA 13.0 driver: CuPy's runtime is CUDA 13

NEEDED = (
    "moefuse needs an NVIDIA GPU of compute capability 8.0 or newer (A100, L40S, H100, B200, "
    "RTX 30xx and later) and an NVIDIA driver for CUDA 13.0 or newer (R580+)."
)
WITHOUT_GPU = (
    "Without a GPU, the tests still run (python -m pytest; the GPU tests skip themselves), and "
    "`python -m moefuse.precompile --arch sm_80 sm_90a --out DIR` compiles the kernels for a "
    "GPU machine (MOEFUSE_CACHE_DIR=DIR there)."
)


@dataclass(frozen=True)
class Observations:
    """What this process found of CUDA, for `diagnose`."""

    failure: str | None = None  # why CUDA could not count the devices, None where it could
    error_code: int | None = None  # that failure's CUDA runtime status (35, 100, ...)
    driver_version: int = 0  # cudaDriverGetVersion: 13000 for CUDA 13.0, 0 without a driver
    device_count: int = 0
    device_id: int = 0  # the current device, where there is one
    device_name: str = ""
    capability: tuple[int, int] = (0, 0)
    visible_devices: str | None = None  # $CUDA_VISIBLE_DEVICES, where set


def cuda_version(driver_version: int) -> str:
    """13000 -> "13.0", 12040 -> "12.4"."""
    return f"{driver_version // 1000}.{driver_version % 1000 // 10}"


def _no_device(obs: Observations) -> str:
    driver = f" (CUDA {cuda_version(obs.driver_version)})" if obs.driver_version else ""
    hidden = "" if obs.visible_devices is None else f" with CUDA_VISIBLE_DEVICES={obs.visible_devices!r}"
    return f"the NVIDIA driver{driver} reports no GPU{hidden}"


def _failure(obs: Observations) -> str:
    """What a failed device count means."""
    from cuda.bindings.runtime import cudaError_t  # (insufficient driver: also no libcuda.so.1)

    if obs.error_code == cudaError_t.cudaErrorNoDevice:
        return _no_device(obs)
    no_driver = obs.error_code == cudaError_t.cudaErrorInsufficientDriver or "libcuda" in (obs.failure or "")
    if no_driver and not obs.driver_version:
        return f"no NVIDIA driver was found (libcuda.so.1 could not be loaded; CUDA: {obs.failure})"
    if no_driver and obs.driver_version < MIN_DRIVER_VERSION:
        return (
            f"the NVIDIA driver supports CUDA {cuda_version(obs.driver_version)} "
            f"(driver version {obs.driver_version}), older than the CUDA 13.0 ({MIN_DRIVER_VERSION}) needed"
        )
    driver = f" (driver for CUDA {cuda_version(obs.driver_version)})" if obs.driver_version else ""
    return f"CUDA could not use the GPU{driver} ({obs.failure})"


def diagnose(obs: Observations) -> str | None:
    """Why moefuse cannot run here, what it needs and what works anyway (a line each); None where
    it can run."""
    if obs.failure is not None:
        found = _failure(obs)
    elif obs.device_count == 0:
        found = _no_device(obs)
    elif obs.capability < MIN_COMPUTE_CAPABILITY:
        major, minor = obs.capability
        found = f"GPU {obs.device_id} ({obs.device_name}) has compute capability {major}.{minor}"
    else:
        return None
    return f"no usable NVIDIA GPU: {found}.\n{NEEDED}\n{WITHOUT_GPU}"


def observe() -> Observations:
    """Ask CUDA what there is: the device count (or why it failed), the driver's CUDA version and
    the current device. Several driver calls: for explaining a failure, not for every forward."""
    import cupy

    runtime = cupy.cuda.runtime
    found = {
        "driver_version": runtime.driverGetVersion(),
        "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    try:
        count = runtime.getDeviceCount()
    except runtime.CUDARuntimeError as exc:
        return Observations(failure=str(exc), error_code=exc.status, **found)
    if count == 0:
        return Observations(**found)
    device_id = cupy.cuda.Device().id
    props = runtime.getDeviceProperties(device_id)
    return Observations(
        device_count=count,
        device_id=device_id,
        device_name=_decoded(props["name"]),
        capability=(props["major"], props["minor"]),
        **found,
    )


def no_gpu_error() -> NoGPUError:
    """The NoGPUError for this machine, its message from what CUDA reports now."""
    message = diagnose(observe())
    return NoGPUError(message or f"CUDA found no usable GPU when first asked.\n{NEEDED}\n{WITHOUT_GPU}")


@cache
def _device_count() -> int:
    """The number of CUDA devices, asked once per process; NoGPUError where CUDA cannot count."""
    import cupy

    try:
        return cupy.cuda.runtime.getDeviceCount()
    except cupy.cuda.runtime.CUDARuntimeError:
        raise no_gpu_error() from None


def require_gpu() -> int:
    """The current CUDA device id; NoGPUError, saying why, if there is no usable GPU."""
    import cupy

    if _device_count() == 0:
        raise no_gpu_error()
    device_id = cupy.cuda.Device().id
    if compute_capability(device_id) < MIN_COMPUTE_CAPABILITY:
        raise no_gpu_error()
    return device_id


@cache
def compute_capability(device_id: int) -> tuple[int, int]:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    return props["major"], props["minor"]


def arch_for(capability: tuple[int, int]) -> str:
    """NVRTC target for a compute capability: the arch-specific `a` targets on Hopper/Blackwell."""
    major, minor = capability
    suffix = "a" if major in (9, 10) else ""
    return f"sm_{major}{minor}{suffix}"


@cache
def device_arch(device_id: int) -> str:
    return arch_for(compute_capability(device_id))


def _decoded(name: str | bytes) -> str:
    return name.decode() if isinstance(name, bytes) else name


def gpu_name(device_id: int | None = None) -> str:
    import cupy

    device_id = require_gpu() if device_id is None else device_id
    return _decoded(cupy.cuda.runtime.getDeviceProperties(device_id)["name"])


def stream_ptr() -> int:
    import cupy

    return cupy.cuda.get_current_stream().ptr


@cache
def multiprocessor_count(device_id: int) -> int:
    import cupy

    return cupy.cuda.runtime.getDeviceProperties(device_id)["multiProcessorCount"]
