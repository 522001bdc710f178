"""The README's quick start runs as written (GPU only)."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu


def test_readme_quick_start_runs():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    (block,) = re.findall(r"## Quick start\n\n```python\n(.*?)```", readme, flags=re.S)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    out = namespace["out"]
    assert out.shape == (512, 1024) and bool(namespace["cp"].isfinite(out.astype("float32")).all())
