"""NVRTC: CUDA C++ source -> cubin for one architecture, with the compiler's resource report."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

BASE_OPTIONS: tuple[str, ...] = ("-std=c++17", "--ptxas-options=-v", "-default-device")


class CompileError(RuntimeError):
    """NVRTC rejected a kernel source; the message names the module and architecture and carries
    the compiler log."""


@dataclass(frozen=True)
class KernelResources:
    """What ptxas reported for one kernel."""

    registers: int
    static_smem_bytes: int
    stack_bytes: int
    spill_store_bytes: int
    spill_load_bytes: int


@dataclass(frozen=True)
class CompileResult:
    cubin: bytes
    log: str


def _check(result: tuple, what: str) -> tuple:
    from cuda.bindings import nvrtc

    err, *values = result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        raise CompileError(f"{what} failed: {nvrtc.nvrtcGetErrorString(err)[1].decode()}")
    return tuple(values)


def nvrtc_version() -> str:
    from cuda.bindings import nvrtc

    major, minor = _check(nvrtc.nvrtcVersion(), "nvrtcVersion")
    return f"{major}.{minor}"


def supported_archs() -> list[int]:
    """The compute capabilities this NVRTC compiles for, as numbers (90 for sm_90)."""
    from cuda.bindings import nvrtc

    (archs,) = _check(nvrtc.nvrtcGetSupportedArchs(), "nvrtcGetSupportedArchs")
    return list(archs)


def compile_options(arch: str, include_dir: Path) -> list[str]:
    return [f"--gpu-architecture={arch}", f"-I{include_dir}", *BASE_OPTIONS]


def compile_cubin(source: Path, arch: str, include_dir: Path, module: str) -> CompileResult:
    """Compile `module`'s `source` to a cubin for `arch` (e.g. "sm_90a"); raise CompileError
    with the log."""
    from cuda.bindings import nvrtc

    (program,) = _check(
        nvrtc.nvrtcCreateProgram(source.read_bytes(), str(source).encode(), 0, [], []),
        "nvrtcCreateProgram",
    )
    try:
        options = [o.encode() for o in compile_options(arch, include_dir)]
        (status,) = nvrtc.nvrtcCompileProgram(program, len(options), options)
        (log_size,) = _check(nvrtc.nvrtcGetProgramLogSize(program), "nvrtcGetProgramLogSize")
        # NVRTC writes into the buffer: it must be a fresh mutable one (b" " * 1 is an interned
        # object, and writing into it corrupts every b" " in the interpreter).
        log_buffer = bytearray(log_size)
        _check(nvrtc.nvrtcGetProgramLog(program, log_buffer), "nvrtcGetProgramLog")
        log = log_buffer.rstrip(b"\0").decode(errors="replace")
        if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise CompileError(f"NVRTC could not compile module {module} ({source}) for {arch}:\n{log}")
        (size,) = _check(nvrtc.nvrtcGetCUBINSize(program), "nvrtcGetCUBINSize")
        cubin = bytearray(size)
        _check(nvrtc.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
        return CompileResult(cubin=bytes(cubin), log=log)
    finally:
        nvrtc.nvrtcDestroyProgram(program)


_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?")


def parse_resources(log: str) -> dict[str, KernelResources]:
    """Per-kernel registers, static shared memory, stack and spills from a `ptxas -v` log."""
    resources: dict[str, KernelResources] = {}
    kernel, frame = None, (0, 0, 0)
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            kernel, frame = m.group(1), (0, 0, 0)
        elif (m := _FRAME.search(line)) and kernel:
            frame = tuple(int(g) for g in m.groups())
        elif (m := _USED.search(line)) and kernel:
            resources[kernel] = KernelResources(
                registers=int(m.group(1)),
                static_smem_bytes=int(m.group(2) or 0),
                stack_bytes=frame[0],
                spill_store_bytes=frame[1],
                spill_load_bytes=frame[2],
            )
            kernel = None
    return resources
