import os

import numpy as np
import pytest


def _gpu_present() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


GPU = _gpu_present()


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs an NVIDIA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if GPU:
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["sm80", "sm90", "sm90-swapped", "sm90-wide", "sm90-auto"])
def backend(request):
    """A test that uses it runs on each GEMM backend the GPU has (the portable one everywhere);
    on Hopper with each kernel family forced at every size: row-major tiles, and swapped operands with
    narrow and with wide tiles (unguarded); and as the heuristics choose (auto)."""
    import cupy

    import moefuse

    name, _, family = request.param.partition("-")
    if name == "sm90" and cupy.cuda.Device().compute_capability != "90":
        pytest.skip("the sm90 kernels need a compute capability 9.0 GPU")
    forced = None if name == "sm80" or family == "auto" else family or "rows"
    with moefuse.override(backend=name, family=forced):
        yield request.param


@pytest.fixture
def rng(request):
    """A freshly seeded generator per test; the seed is printed on failure for replay."""
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"{request.node.name}: seed {seed}")
    return np.random.default_rng(seed)


ARCHS = ("sm_80", "sm_90a", "sm_100a")


@pytest.fixture(scope="session")
def compiled(tmp_path_factory):
    """(arch, module) -> (cubin path, compile result): every module of every architecture,
    compiled once per test run (two at a time) into a fresh folder."""
    from moefuse import _cache, _sources

    out = tmp_path_factory.mktemp("cubins")
    builds = [(module, arch) for arch in ARCHS for module in _sources.modules_for(arch)]

    def build(module: str, arch: str):
        return _cache.compile_module(module, arch, directory=out)

    return {(arch, module): result for (module, arch), result, _ in _cache.compile_all(builds, 2, build)}


@pytest.fixture(scope="session")
def specs(compiled):
    """arch -> every kernel's published launch contract, read from the compiled cubins."""
    from moefuse import _spec

    by_arch = {}
    for (arch, module), (path, _) in compiled.items():
        by_arch.setdefault(arch, []).extend(_spec.read_specs(path.read_bytes(), module).values())
    return {arch: tuple(found) for arch, found in by_arch.items()}


@pytest.fixture
def fake_gpu(specs, monkeypatch):
    """`fake_gpu(arch)`: a GPU of `arch` (132 SMs) whose module catalog is read from `specs`,
    with the kernel, preparation and configuration memos emptied. Returns the list of module sets
    the catalog is asked for, in order (a call kind's prepare first)."""
    from moefuse import _cache, _device, backends, kernels

    def fake(arch: str) -> list[set[str]]:
        read = []

        def catalog(arch, modules):
            read.append(set(modules))
            return tuple(s for s in specs[arch] if s.module in modules)

        monkeypatch.setattr(_cache, "catalog", catalog)
        monkeypatch.setattr(_device, "require_gpu", lambda: 0)
        monkeypatch.setattr(_device, "device_arch", lambda device_id: arch)
        monkeypatch.setattr(_device, "multiprocessor_count", lambda device_id: 132)
        monkeypatch.setattr(kernels, "_selected", {})
        monkeypatch.setattr(kernels, "_prepared", set())
        monkeypatch.setattr(backends, "_configs", {})
        return read

    return fake


@pytest.fixture
def fp8_gpu():
    """Skips unless this GPU's backend has the fp8 kernels (Hopper, not MOEFUSE_BACKEND=sm80)."""
    from moefuse import _device, backends

    if not backends.for_device(_device.require_gpu()).fp8:
        pytest.skip("the fp8 kernels run on Hopper's sm90 backend only for now")
