"""The device probes compile here (NVRTC, no GPU): a change to a header they include shows before
a device session is spent on them."""

import subprocess
import sys
from pathlib import Path

PROBES = Path(__file__).resolve().parents[1] / "probes"


def test_fp8_probe_compiles_without_spills():
    done = subprocess.run(
        [sys.executable, str(PROBES / "fp8_probe.py"), "--compile-only"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
