"""The GPU a measurement runs on: whether there is one, what it is, its clocks, power and
temperature; memory pools; messages.

CuPy is imported inside the functions: bench.py parses its command line, and says why there is no
GPU, before anything touches CUDA.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from moefuse.info import Telemetry

GiB = 1 << 30


def short(e: BaseException, n: int = 80) -> str:
    """An exception as one line of at most n characters."""
    msg = " ".join(f"{type(e).__name__}: {e}".split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def log(msg: str) -> None:
    """Progress and warnings go to stderr; the results to stdout."""
    print(msg, file=sys.stderr, flush=True)


def no_gpu_error() -> Exception | None:
    """moefuse's NoGPUError for this machine (what was found, what is needed, what works without a
    GPU), or None where there is a usable GPU."""
    from moefuse import NoGPUError
    from moefuse._device import require_gpu

    try:
        require_gpu()
    except NoGPUError as e:
        return e
    return None


def l2_bytes() -> int:
    """The current device's L2 size (50 MiB where the driver does not say)."""
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    return int(props.get("l2CacheSize", 0)) or 50 << 20


@dataclass(frozen=True)
class GpuInfo:
    name: str
    cc: str
    mem_gib: float
    l2_bytes: int
    driver: int
    cupy: str
    backend: str  # the moefuse kernels this GPU runs (sm80, sm90)


def gpu_info(moefuse: ModuleType) -> GpuInfo:
    """The current device; its name from NVML where available (the full name, e.g. NVIDIA H100
    80GB HBM3)."""
    import cupy as cp

    from moefuse.info import NvmlUnavailable, nvml_name

    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    try:
        name = nvml_name(dev.pci_bus_id)
    except NvmlUnavailable:
        name = moefuse.gpu_name()
    return GpuInfo(
        name=name,
        cc=f"{props['major']}.{props['minor']}",
        mem_gib=round(props["totalGlobalMem"] / GiB, 1),
        l2_bytes=l2_bytes(),
        driver=cp.cuda.runtime.driverGetVersion(),
        cupy=cp.__version__,
        backend=moefuse.backends.for_device(dev.id).name,
    )


def gpu_state() -> Telemetry | str:
    """The current device's clocks, power and temperature (NVML), or why NVML cannot say."""
    import cupy as cp

    from moefuse.info import NvmlUnavailable, telemetry

    try:
        return telemetry(cp.cuda.Device().pci_bus_id)
    except NvmlUnavailable as e:
        return f"clocks and power n/a ({e})"


def free_pools() -> None:
    """Return CuPy's (and torch's, if loaded) cached blocks, so the next allocation sees all."""
    import cupy as cp

    cp.get_default_memory_pool().free_all_blocks()
    if "torch" in sys.modules:
        with contextlib.suppress(Exception):
            sys.modules["torch"].cuda.empty_cache()
