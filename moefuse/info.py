"""What this moefuse installation and its GPUs are, for bug reports and benchmark records.

    python -m moefuse.info

The version; each GPU (name, compute capability, the kernels moefuse runs on it); the driver;
clocks, power and temperature from NVML (the nvidia-ml-py package); NVRTC; the kernel cache and the
modules it holds; and, per architecture, the kernel family that serves it and whether that has run
on hardware or was only compiled. Without a GPU (or without NVML) it prints what it can, says what
it could not find, and exits 0. `telemetry` is the NVML reading bench.py records before and after a
run.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

from . import __version__, _cache, _device, _nvrtc, _sources, backends


@dataclass(frozen=True)
class ArchSupport:
    arch: str  # the NVRTC target the runtime builds for such a GPU (_device.arch_for)
    gpus: str
    kernels: str  # the kernel family that serves it
    hardware: str  # what of it has run on a GPU, and where; or that it was only compiled


# The one record of which kernels serve which architecture and how far each has been tested
# (docs/PERF.md holds the runs). Keep it true: a family that has not run on a GPU says so.
ARCH_SUPPORT = (
    ArchSupport(
        "sm_80",
        "A100, A10, L40S, RTX 30xx/40xx (compute capability 8.x)",
        "sm80: the portable mma.sync kernels (cuda_src/sm80)",
        "the portable kernels have run on H100 and H200 only, built for sm_90a and forced there with "
        "MOEFUSE_BACKEND=sm80 (the GPU tests run both backends); no sm_8x GPU (A100 or other) was "
        "available, so an sm_80 cubin has been compiled and its launch contracts checked, never run",
    ),
    ArchSupport(
        "sm_90a",
        "H100, H200 (compute capability 9.0)",
        'Hopper: wgmma + TMA, row-major tiles ("rows") and swapped operands ("swapped"), chosen per '
        "call (cuda_src/sm90); the portable kernels with MOEFUSE_BACKEND=sm80",
        "run on H100 and H200 (the GPU tests, compute-sanitizer, bench.py; docs/PERF.md); the fp8 "
        "(e4m3) kernels on H100 only",
    ),
    ArchSupport(
        "sm_100a",
        "B200, GB200 (compute capability 10.0)",
        "the portable sm80 kernels: Blackwell kernels of its own (tcgen05, tensor memory) are not "
        "implemented",
        "compiled and its launch contracts checked without a GPU; never run: no Blackwell GPU was available",
    ),
)


def arch_support(arch: str) -> ArchSupport:
    """The record for an NVRTC target; targets without one (sm_86, sm_89, sm_120, ...) get the
    portable kernels, which nothing here has built or run for them."""
    for support in ARCH_SUPPORT:
        if support.arch == arch:
            return support
    return ArchSupport(
        arch,
        "other GPUs of compute capability 8.0 or newer",
        "the portable sm80 kernels, compiled for this target on first use",
        "never compiled or run for this target by moefuse's tests",
    )


# ------------------------------------------------------------------ NVML


class NvmlUnavailable(RuntimeError):
    """NVML cannot be asked: the nvidia-ml-py package or the driver's libnvidia-ml is missing, or
    it does not know the device. The message says which."""


@dataclass(frozen=True)
class Telemetry:
    """One NVML reading of a GPU; a field is None where NVML does not report it."""

    sm_mhz: int | None
    sm_max_mhz: int | None
    memory_mhz: int | None
    memory_max_mhz: int | None
    power_w: float | None
    power_limit_w: float | None
    temperature_c: int | None
    held_by: tuple[str, ...]  # why the clocks are below their maximum (NVML's clock event reasons)

    def __str__(self) -> str:
        def pair(now, top, unit: str) -> str:
            return f"{'?' if now is None else f'{now:.0f}'}/{'?' if top is None else f'{top:.0f}'} {unit}"

        text = (
            f"SM {pair(self.sm_mhz, self.sm_max_mhz, 'MHz')}, memory "
            f"{pair(self.memory_mhz, self.memory_max_mhz, 'MHz')} (current/max), power "
            f"{pair(self.power_w, self.power_limit_w, 'W')} (draw/limit), "
            f"{'?' if self.temperature_c is None else self.temperature_c} C"
        )
        return text + (f", clocks held by: {', '.join(self.held_by)}" if self.held_by else "")


# NVML's clock event ("throttle") reason bits, by the suffix of their pynvml constant names.
CLOCK_REASONS = {
    "SwPowerCap": "power cap",
    "HwSlowdown": "hardware slowdown",
    "HwPowerBrakeSlowdown": "power brake",
    "SwThermalSlowdown": "thermal (software)",
    "HwThermalSlowdown": "thermal (hardware)",
    "SyncBoost": "sync boost",
    "ApplicationsClocksSetting": "application clocks setting",
    "DisplayClockSetting": "display clock setting",
}


@functools.cache
def _nvml():
    """pynvml, initialised once per process; NvmlUnavailable saying why it cannot be."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable(
            "the nvidia-ml-py package (pynvml) is not installed: python -m pip install nvidia-ml-py"
        ) from None
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML could not start ({exc})") from None
    return pynvml


def _handle(pci_bus_id: str):
    nvml = _nvml()
    try:
        return nvml, nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id)
    except nvml.NVMLError as exc:
        raise NvmlUnavailable(f"NVML does not know the GPU at {pci_bus_id} ({exc})") from None


def _field(read, *args):
    """One NVML query, None where this GPU or driver does not answer it."""
    try:
        return read(*args)
    except _nvml().NVMLError:
        return None


def _reason_bit(nvml, suffix: str) -> int:
    """A clock event reason's bit, under its newer name or the older "throttle" one."""
    return getattr(nvml, f"nvmlClocksEventReason{suffix}", None) or getattr(
        nvml, f"nvmlClocksThrottleReason{suffix}", 0
    )


def telemetry(pci_bus_id: str) -> Telemetry:
    """The GPU's clocks, power and temperature now (CuPy's `Device(i).pci_bus_id` names it)."""
    nvml, handle = _handle(pci_bus_id)
    sm, mem = nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM
    power, limit = (
        _field(read, handle) for read in (nvml.nvmlDeviceGetPowerUsage, nvml.nvmlDeviceGetEnforcedPowerLimit)
    )
    read_reasons = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)  # newer name
    reasons = _field(read_reasons or nvml.nvmlDeviceGetCurrentClocksThrottleReasons, handle) or 0
    held = tuple(text for suffix, text in CLOCK_REASONS.items() if reasons & _reason_bit(nvml, suffix))
    return Telemetry(
        sm_mhz=_field(nvml.nvmlDeviceGetClockInfo, handle, sm),
        sm_max_mhz=_field(nvml.nvmlDeviceGetMaxClockInfo, handle, sm),
        memory_mhz=_field(nvml.nvmlDeviceGetClockInfo, handle, mem),
        memory_max_mhz=_field(nvml.nvmlDeviceGetMaxClockInfo, handle, mem),
        power_w=None if power is None else power / 1000,
        power_limit_w=None if limit is None else limit / 1000,
        temperature_c=_field(nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU),
        held_by=held,
    )


def nvml_name(pci_bus_id: str) -> str:
    """The GPU's full name from NVML (e.g. NVIDIA H100 80GB HBM3)."""
    nvml, handle = _handle(pci_bus_id)
    name = _field(nvml.nvmlDeviceGetName, handle)
    if name is None:
        raise NvmlUnavailable(f"NVML has no name for the GPU at {pci_bus_id}")
    return name.decode() if isinstance(name, bytes) else str(name)


# ------------------------------------------------------------------ the report


def _versions() -> list[str]:
    found = [
        f"moefuse {__version__} ({Path(__file__).resolve().parent})",
        f"python {platform.python_version()}",
    ]
    for module in ("cupy", "numpy", "cuda.bindings"):
        try:
            found.append(f"{module} {__import__(module, fromlist=['_']).__version__}")
        except Exception as exc:  # a broken install is what this report is for
            found.append(f"{module} n/a ({type(exc).__name__})")
    return [", ".join(found)]


def _driver(observed: _device.Observations) -> list[str]:
    cuda = (
        f"CUDA {_device.cuda_version(observed.driver_version)}"
        if observed.driver_version
        else "no CUDA driver"
    )
    try:
        return [f"driver: {_nvml().nvmlSystemGetDriverVersion()} ({cuda})"]
    except NvmlUnavailable as exc:
        return [f"driver: {cuda}; NVML unavailable, so no clocks or power below: {exc}"]


def _gpu_lines(device_id: int) -> list[str]:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(device_id)
    capability = (props["major"], props["minor"])
    arch = _device.arch_for(capability)
    pci = cupy.cuda.Device(device_id).pci_bus_id
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    lines = [
        f"GPU {device_id}: {name}, compute capability {capability[0]}.{capability[1]} ({arch}), "
        f"{props['multiProcessorCount']} SMs, {props['totalGlobalMem'] / (1 << 30):.1f} GiB, PCI {pci}"
    ]
    if capability < _device.MIN_COMPUTE_CAPABILITY:
        return [*lines, "  moefuse: not supported (compute capability 8.0 or newer needed)"]
    try:
        backend = backends.for_device(device_id).name
    except ValueError as exc:  # a MOEFUSE_BACKEND this GPU cannot run
        backend = f"none ({exc})"
    forced = os.environ.get(backends.BACKEND_ENV)
    lines.append(f"  moefuse backend: {backend}" + (f" ({backends.BACKEND_ENV}={forced})" if forced else ""))
    support = arch_support(arch)
    lines.append(f"  kernels for {arch}: {support.kernels}")
    lines.append(f"  on hardware: {support.hardware}")
    try:
        lines.append(f"  NVML: {telemetry(pci)}")
    except NvmlUnavailable as exc:
        lines.append(f"  NVML: n/a ({exc})")
    return lines


def _gpus(observed: _device.Observations) -> list[str]:
    problem = _device.diagnose(observed)
    if problem is not None and observed.device_count == 0:
        return [f"GPU: {problem.splitlines()[0]}"]
    return [line for device_id in range(observed.device_count) for line in _gpu_lines(device_id)]


def _nvrtc_lines() -> list[str]:
    from .precompile import supported_archs

    return [f"NVRTC {_nvrtc.nvrtc_version()} (cuda.bindings); builds for {' '.join(supported_archs())}"]


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def _current_entry(name: str, root: Path) -> tuple[str, str] | None:
    """(module, arch) of a cache entry for these sources, this NVRTC and these options; None for
    an entry of others (which the runtime never reads: its key differs)."""
    module, arch, _ = ([*name.removesuffix(".cubin").rsplit("-", 2), "", ""])[:3]
    if module in _sources.MODULES and name == _cache.entry_name(module, arch, root):
        return module, arch
    return None


def _cache_lines() -> list[str]:
    folder = _cache.cache_dir()
    where = (
        f"${_cache.CACHE_ENV}"
        if os.environ.get(_cache.CACHE_ENV)
        else f"default; ${_cache.CACHE_ENV} overrides"
    )
    head = f"kernel cache: {folder} ({where})"
    if not folder.is_dir():
        return [head, "  empty: it does not exist yet (the first call on a GPU compiles into it)"]
    root, current, stale, total = _sources.source_root(), {}, 0, 0
    cubins = sorted(folder.glob("*.cubin"))
    for cubin in cubins:
        record = _cache.record_path(cubin)
        total += cubin.stat().st_size + (record.stat().st_size if record.exists() else 0)
        found = _current_entry(cubin.name, root)
        if found is None:
            stale += 1
        else:
            current.setdefault(found[1], []).append(found[0])
    lines = [head, f"  {len(cubins)} entries, {_mib(total)}"]
    for arch, modules in current.items():
        lines.append(
            f"  {arch}: {len(modules)} of {len(_sources.modules_for(arch))} modules built from these "
            f"sources by this NVRTC ({', '.join(modules)}); the others compile when a call needs them"
        )
    if stale:
        lines.append(f"  {stale} entries of other sources, NVRTC versions or options (never read here)")
    return lines


def _kernel_table() -> list[str]:
    lines = [
        "kernels per architecture (what serves it; whether it has run on hardware or was only compiled):"
    ]
    for s in ARCH_SUPPORT:
        lines += [
            f"  {s.arch:8} {s.gpus}",
            f"  {'':8} kernels: {s.kernels}",
            f"  {'':8} hardware: {s.hardware}",
        ]
    lines.append(f"  {'other':8} {arch_support('other').kernels}; {arch_support('other').hardware}")
    return lines


def report() -> list[str]:
    """Every section's lines; a section that fails says so in one line instead."""
    observed = _device.observe()
    lines: list[str] = []
    for section in (
        _versions,
        lambda: _driver(observed),
        lambda: _gpus(observed),
        _nvrtc_lines,
        _cache_lines,
    ):
        try:
            lines += section()
        except Exception as exc:  # report what can be found, whatever else is broken
            lines.append(f"(a section failed: {type(exc).__name__}: {exc})")
    return lines + _kernel_table()


def main() -> int:
    print("\n".join(report()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
