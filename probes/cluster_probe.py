"""TMA multicast across 2-CTA clusters on a Hopper GPU (docs/DESIGN.md D30's next step): whether
the cluster launch, the multicast load into both CTAs and the remote mbarrier arrivals work, and
how much faster a cluster pair fills its shared memory when each CTA reads half of a shared tile
from L2 instead of all of it (probes/cluster_probe.cu).

    python probes/cluster_probe.py                 # H100 / H200: checks, then a timing table
    python probes/cluster_probe.py --compile-only  # anywhere: NVRTC sm_90a and the SASS check

Checks: each CTA's sum of every tile it received (32-bit words, mod 2^32) equals the host's, for
both forms, over more iterations than ring slots (phases wrap). Timing: CTAs x iterations x 16 KiB
filled per second, each form's median of 7 runs, and the multicast form's L2 reads (half).
Exit status 1 if a check fails.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # moefuse from this checkout

from probe_tools import check_sass, median_ms  # noqa: E402

from moefuse import _nvrtc  # noqa: E402

SOURCE = Path(__file__).with_suffix(".cu")
TILE_ROWS, ROW_BYTES = 128, 128
FORMS = {"single": 1, "multicast": 2}  # form -> CTAs sharing a tile's L2 read
failures: list[str] = []


def report(what: str, result: str, ok: bool = True) -> None:
    print(f"{what:44} {result if ok else 'FAIL: ' + result}")
    if not ok:
        failures.append(what)


def compile_probe() -> bytes:
    result = _nvrtc.compile_cubin(SOURCE, "sm_90a", ROOT / "cuda_src", "cluster_probe")
    for name, res in _nvrtc.parse_resources(result.log).items():
        spills = res.spill_store_bytes + res.spill_load_bytes
        report(f"compile {name}", f"{res.registers} registers, {spills} B spilled", not spills)
    return result.cubin


def stream_verdict(name: str, function: str) -> tuple[str, bool] | None:
    """The streams' SASS: every one syncs the cluster; the multicast ones load by
    UTMALDG.2D.MULTICAST and arrive on the partner's barrier, the single ones do neither."""
    if not name.startswith("stream_"):
        return None
    multicast = "multicast" in name
    ok = ("UTMALDG.2D.MULTICAST" in function) == multicast and "UCGABAR_WAIT" in function
    ok = ok and ("SYNCS.ARRIVE.TRANS64.RED" in function) == multicast  # the remote arrival
    return ("multicast load, remote arrive" if multicast else "plain load"), ok


def expected_sums(tiles: np.ndarray, ctas: int, iters: int) -> np.ndarray:
    """What each CTA's consumer sums: tile (cluster + it) % count in iteration it."""
    per_tile = tiles.view(np.uint32).reshape(len(tiles), -1).sum(axis=1, dtype=np.uint32)
    sums = np.zeros(ctas, np.uint32)
    for cta in range(ctas):
        picks = (cta // 2 + np.arange(iters)) % len(tiles)
        sums[cta] = per_tile[picks].sum(dtype=np.uint32)
    return sums


def launcher(module, name: str, ctas: int, smem_bytes: int):
    """`name`'s launch over `ctas` CTAs with the probe's shared memory, given (desc, tiles, iters,
    sums)."""
    from cupy.cuda import driver

    fn = module.get_function(name)
    driver.funcSetAttribute(fn.ptr, driver.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem_bytes)

    def launch(desc, tiles: int, iters: int, sums) -> None:
        fn((ctas,), (128,), (desc, np.int32(tiles), np.int32(iters), sums), shared_mem=smem_bytes)

    return launch


def run(cubin: bytes) -> None:
    import cupy

    from moefuse import _tma

    module = cupy.cuda.function.Module()  # as moefuse loads its modules: functions with a .ptr
    module.load(cubin)
    smem = cupy.zeros(1, np.int32)
    module.get_function("smem_bytes")((1,), (1,), (smem,))
    smem_bytes = int(smem.get()[0])
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    ctas = props["multiProcessorCount"] // 2 * 2
    print(f"GPU: {props['name'].decode()}, {ctas} CTAs in clusters of 2, {smem_bytes} B shared memory each")
    rng = np.random.default_rng(16)
    count = 64
    host = rng.integers(0, 256, (count, TILE_ROWS * ROW_BYTES), dtype=np.uint8)
    tiles = cupy.asarray(host.reshape(count * TILE_ROWS, ROW_BYTES))
    sums = cupy.full(ctas, 0xFFFFFFFF, np.uint32)
    for form, sharing in FORMS.items():
        desc = _tma.tile_desc(tiles, TILE_ROWS // sharing, ROW_BYTES)
        iters = 37  # more than the ring's 4 slots: every phase flips several times
        launcher(module, f"stream_{form}_check", ctas, smem_bytes)(desc, count, iters, sums)
        cupy.cuda.Device().synchronize()
        equal = sums.get() == expected_sums(host, ctas, iters)
        report(f"{form}: every CTA's tile sums", f"{int(equal.sum())} of {ctas} equal", bool(equal.all()))
        timed, iters = launcher(module, f"stream_{form}", ctas, smem_bytes), 20000
        ms = median_ms(lambda timed=timed, desc=desc, iters=iters: timed(desc, count, iters, sums))
        filled = ctas * iters * TILE_ROWS * ROW_BYTES
        report(
            f"{form}: shared memory filled",
            f"{filled / ms / 1e6:8.0f} GB/s ({ms:.3f} ms), L2 read {filled / sharing / ms / 1e6:8.0f} GB/s",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--compile-only", action="store_true", help="compile and check the SASS, no GPU")
    args = parser.parse_args()
    cubin = compile_probe()
    check_sass(cubin, report, stream_verdict)
    if not args.compile_only:
        run(cubin)
    print("failures: " + (", ".join(failures) or "none"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
