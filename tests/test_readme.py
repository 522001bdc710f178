"""The README's two commands install what they need and CI runs the test command as written; the
quick start runs as written (GPU only)."""

import configparser
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def two_commands() -> list[str]:
    """The command lines (indented four spaces) of the section "The two commands"."""
    (section,) = re.findall(r"## The two commands\n(.*?)\n## ", README, flags=re.S)
    return re.findall(r"^    (\S.*)$", section, flags=re.M)


def requirements() -> dict[str, list[str]]:
    """setup.cfg's requirement names: "" for the base install, then one entry per extra."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    found = {"": cfg["options"]["install_requires"]} | dict(cfg["options.extras_require"])
    return {key: [re.match(r"[\w.-]+", req)[0] for req in value.split()] for key, value in found.items()}


def test_the_two_commands_install_the_extras_they_need():
    bench, tests = two_commands()
    assert bench == 'python -m pip install ".[bench]" && python bench.py'
    assert tests == 'python -m pip install ".[test]" && python -m pytest -q'
    declared = requirements()
    for command in (bench, tests):
        for extra in re.findall(r'"\.\[(\w+)\]"', command):
            assert extra in declared, f"setup.cfg has no extra {extra!r} for: {command}"


def test_ci_runs_the_readme_test_command():
    _, tests = two_commands()
    quiet = tests.replace("pip install ", "pip install -q ")  # CI's one liberty: a quiet pip
    assert quiet in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_nvidia_libraries_come_as_wheels_no_toolkit_needed():
    # NVRTC compiles moefuse's kernels and CuPy's; CuPy's bf16/fp16 kernels include the CUDA
    # headers of nvidia-cuda-runtime (whose libcudart cuRAND links). bench.py's cupy.matmul needs
    # cuBLAS and its cupy.random cuRAND, which the base install does not bring.
    declared = requirements()
    assert {"cupy-cuda13x", "cuda-bindings", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime"} <= set(declared[""])
    assert {"nvidia-cublas", "nvidia-curand"} <= set(declared["bench"])
    assert "hypothesis" in declared["test"]


@pytest.mark.gpu
def test_readme_quick_start_runs():
    (block,) = re.findall(r"## Quick start\n\n```python\n(.*?)```", README, flags=re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.shape == (512, 1024) and bool(namespace["cp"].isfinite(out.astype("float32")).all())


@pytest.mark.gpu
def test_readme_serving_example_replays_like_an_eager_call():
    (quick,) = re.findall(r"## Quick start\n\n```python\n(.*?)```", README, flags=re.S)
    (serving,) = re.findall(r"## Serving: .*?```python\n(.*?)```", README, flags=re.S)
    namespace: dict = {}
    exec(compile(quick, "README.md", "exec"), namespace)
    exec(compile(serving, "README.md", "exec"), namespace)
    cp, moefuse, ns = namespace["cp"], namespace["moefuse"], namespace
    replayed = ns["out"].copy()
    eager = ns["layer"](ns["x"], *moefuse.route(ns["router_logits"], ns["k"]))
    assert bool((replayed.view(cp.uint16) == eager.view(cp.uint16)).all())  # k = 2: bitwise
