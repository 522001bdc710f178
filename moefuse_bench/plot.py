"""bench.py --plot: achieved TFLOP/s and GB/s against the token count T, one column per case
(shape), one line per implementation, the run's ceilings as dashed lines.

matplotlib is optional (not a dependency): `missing()` says so before anything is measured. Only
matplotlib's object API is used (no pyplot), so no display or backend is needed.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .report import Meta

INSTALL = "python -m pip install matplotlib"


def missing() -> str | None:
    """Why --plot cannot work here (None: it can)."""
    if importlib.util.find_spec("matplotlib") is None:
        return f"--plot needs matplotlib, which is not installed ({INSTALL})"
    return None


def achieved(row: dict[str, Any], key: str) -> tuple[float, float] | None:
    """(TFLOP/s, GB/s) of the time under `key` (None where the row has none): the case's FLOPs
    and bytes (weights of the experts hit + x + out) over that time, as the report counts them."""
    ms = row.get(key)
    if not ms:
        return None
    seconds = ms * 1e-3
    return row["flops"] / seconds / 1e12, row["bytes"] / seconds / 1e9


def plot(meta: Meta, rows: list[dict[str, Any]], path: str | Path) -> None:
    """Write the figure to `path` (its suffix picks the format: .png, .svg, .pdf)."""
    from matplotlib.figure import Figure

    measured = [r for r in rows if "fused_ms" in r]
    cases = list(dict.fromkeys(r["case"] for r in measured))
    if not cases:
        raise ValueError("no case was measured: nothing to plot")
    moefuse = "moefuse fp8" if meta.fp8 else "moefuse"
    lines = {moefuse: "fused_ms", **{name: f"{name}_ms" for name in meta.baselines}}
    c = meta.ceilings
    metrics = (
        ("TFLOP/s", c.matmul_tflops, f"{c.matmul_dtype} matmul ceiling"),
        ("GB/s (weights hit + x + out)", c.copy_gbps, "copy ceiling (read + write)"),
    )
    fig = Figure(figsize=(4.2 * len(cases) + 1.0, 7.0), layout="constrained")
    axes = fig.subplots(2, len(cases), squeeze=False)
    for col, case in enumerate(cases):
        case_rows = sorted((r for r in measured if r["case"] == case), key=lambda r: r["T"])
        for m, (label, ceiling, ceiling_label) in enumerate(metrics):
            ax = axes[m][col]
            for index, (name, key) in enumerate(lines.items()):  # one colour per implementation
                points = [(r["T"], v[m]) for r in case_rows if (v := achieved(r, key))]
                if points:
                    style = dict(color=f"C{index}", linewidth=2.2 if name == moefuse else 1.2)
                    ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=name, **style)
            ax.axhline(ceiling, linestyle="--", color="gray", linewidth=1, label=ceiling_label)
            ax.set_xscale("log", base=2)
            ax.set_xticks([r["T"] for r in case_rows], [str(r["T"]) for r in case_rows])
            ax.minorticks_off()
            ax.set_yscale("log")
            ax.grid(True, which="both", alpha=0.3)
            ax.set_xlabel("tokens T")
            if col == 0:
                ax.set_ylabel(label)
            if m == 0:
                ax.set_title(case)
            ax.legend(fontsize="x-small")
    # one line per fact: a single-case figure is narrow
    weights = ", fp8 weights" if meta.fp8 else ""
    fig.suptitle(f"moefuse bench\n{meta.gpu.name}\n{meta.dtype}{weights}, {meta.date}", fontsize="medium")
    fig.savefig(path, dpi=130)
