"""bench.py's table: the run's header (GPU and its clocks, power and temperature at the start and
the end, software, baselines, ceilings, method), one row per case with a column per baseline, the
per-step times (--stages) and the notes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from .ceilings import Ceilings
from .device import GpuInfo

if TYPE_CHECKING:
    from moefuse.info import Telemetry


@dataclass(frozen=True)
class Meta:
    """What a run was: written above the table and as the JSON file's "meta"."""

    date: str
    command: str
    gpu: GpuInfo
    ceilings: Ceilings
    dtype: str
    torch: str | None
    timing: str
    baselines: dict[str, str]  # the timed ones: name (the column) -> what it is
    skipped_baselines: list[str]  # why each other one is not timed
    gpu_start: Telemetry | str  # NVML's reading, or why there is none
    gpu_end: Telemetry | str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else format(v, spec) + suffix


def columns(baselines: list[str]) -> list[str]:
    """The table's columns: moefuse's, then one time per baseline, then the comparisons."""
    moefuse = ["case", "T", "mode", "fused_ms", "TFLOP/s", "GB/s", "%floor", "unfused_ms", "f/u"]
    return [*moefuse, *(f"{name}_ms" for name in baselines), "speedup", "rel_err"]


def _cells(r: dict[str, Any], baselines: list[str]) -> list[str]:
    return [
        r["case"], str(r["T"]), r["mode"].split()[0], fmt(r["fused_ms"], ".4f"),
        fmt(r["tflops"], ".1f"), fmt(r["gbps"], ".0f"), fmt(r["pct_floor"], ".1f"),
        fmt(r["unfused_ms"], ".4f"), fmt(r["fused_over_unfused"], ".2f"),
        *(fmt(r.get(f"{name}_ms"), ".4f") for name in baselines),
        fmt(r["speedup"], ".2f", "x"), fmt(r.get("err"), ".1e"),
    ]  # fmt: skip


def _stage_lines(rows: list[dict[str, Any]]) -> list[str]:
    staged = [r for r in rows if "stages" in r]
    if not staged:
        return []
    names = list(dict.fromkeys(k for r in staged for k in r["stages"]))
    lines = ["", "per-step ms, one eager forward (--stages): " + ", ".join(names)]
    for r in staged:
        cells = " ".join(f"{r['stages'].get(n, float('nan')):.4f}" for n in names)
        lines.append(
            f"{r['case']:<10} {r['T']:>6}  {cells}  gemm2 fused/store {r['gemm2_fused_over_store']:.3f}"
        )
    return lines


def report(meta: Meta, rows: list[dict[str, Any]]) -> str:
    """The whole text report. A row without "fused_ms" was skipped or failed: dashes, and its
    reason among the notes."""
    c, g = meta.ceilings, meta.gpu
    lines = [
        f"moefuse bench  {meta.date}  GPU: {g.name} (cc {g.cc}, {g.mem_gib} GiB, "
        + f"L2 {g.l2_bytes >> 20} MiB, driver {g.driver})",
        f"software: moefuse {g.backend} kernels, cupy {g.cupy}, torch {meta.torch or 'n/a'}, "
        f"dtype {meta.dtype}",
        f"command: {meta.command}",
        f"ceilings: {c.matmul_dtype} matmul 8192^3 {c.matmul_tflops:.1f} TFLOP/s (cuBLAS "
        + f"via CuPy); 1 GiB D2D copy {c.copy_gbps:.0f} GB/s (read + write)",
        f"timing: {meta.timing}",
        f"GPU at the start: {meta.gpu_start}",
        f"GPU at the end:   {meta.gpu_end}",
        "baselines: " + ("; ".join(f"{name}: {what}" for name, what in meta.baselines.items()) or "none"),
        *(f"  {why}" for why in meta.skipped_baselines),
        "",
    ]
    names = list(meta.baselines)
    header = columns(names)
    table, notes = [header], {}  # note text -> the cases it applies to
    for r in rows:
        where = f"{r['case']} T={r['T']}"
        if "fused_ms" not in r:
            table.append([r["case"], str(r["T"])] + ["-"] * (len(header) - 2))
            notes.setdefault(r.get("skipped") or r.get("failed"), []).append(where)
            continue
        table.append(_cells(r, names))
        for n in r["notes"]:
            notes.setdefault(n, []).append(where)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [
            s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    lines += [
        "",
        "%floor = max(FLOPs / matmul ceiling, bytes / copy ceiling) / fused time",
        "  (bytes: weights of the experts hit + x + out); f/u = fused / unfused time",
        "speedup = best baseline / fused; rel_err = ||moefuse fused - cupy|| / ||cupy||",
    ]
    lines += _stage_lines(rows)
    many = len(rows) > 1
    for n, cases in notes.items():
        lines.append(f"note ({'all' if many and len(cases) == len(rows) else ', '.join(cases)}): {n}")
    return "\n".join(lines)
