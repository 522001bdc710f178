"""Each script of examples/ runs to the end on a GPU and prints what it says it does."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TORCH = importlib.util.find_spec("torch") is not None
TRANSFORMERS = TORCH and importlib.util.find_spec("transformers") is not None

pytestmark = pytest.mark.gpu


def run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_cupy_layer():
    out = run("cupy_layer.py")
    for name in ("SwiGLU", "gpt-oss"):
        line = rf"^{name}: out \(256, 1024\) bfloat16, relative error vs float64 reference \d\.\de-0[3-9]$"
        assert re.search(line, out, re.M)


@pytest.mark.skipif(not TORCH, reason="needs PyTorch")
def test_torch_compile():
    out = run("torch_compile.py")
    assert len(re.findall(r"^T=\d+: compiled moefuse layer vs torch, relative error", out, re.M)) == 3


@pytest.mark.skipif(not TRANSFORMERS, reason="needs PyTorch and transformers")
@pytest.mark.parametrize("family", ["mixtral", "qwen3_moe"])
def test_transformers_generate(family):
    out = run("transformers_generate.py", "--family", family)
    assert re.search(r"^eager +\[\[", out, re.M) and re.search(r"^moefuse +\[\[", out, re.M)
    (same,) = re.findall(r"^moefuse generated the same token as eager at (\d+) of 48 positions$", out, re.M)
    assert int(same) >= 24  # greedy continuations part only at near-ties
