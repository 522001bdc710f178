"""PyTorch and transformers stay optional: moefuse never imports them itself, and each integration
says what it needs where they are missing (CI has neither)."""

import importlib
import importlib.util
import subprocess
import sys

import pytest


def test_moefuse_imports_no_framework():
    code = "import sys, moefuse, moefuse.integrations; print({'torch', 'transformers'} & set(sys.modules))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout == "set()\n"


@pytest.mark.skipif(importlib.util.find_spec("torch") is not None, reason="PyTorch is installed")
@pytest.mark.parametrize(
    ("module", "needs"),
    [
        ("moefuse.integrations.torch", r"needs PyTorch \(pip install torch\)"),
        (
            "moefuse.integrations.transformers",
            r"needs PyTorch and transformers 5.x \(pip install torch transformers\)",
        ),
    ],
)
def test_an_integration_without_its_framework_says_what_to_install(module, needs):
    with pytest.raises(ImportError, match=needs):
        importlib.import_module(module)
