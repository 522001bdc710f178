"""bench.py's table: the run's header (GPU and its clocks, power and temperature at the start and
the end, software, baselines, ceilings, method), one row per case with a column per baseline (with
fp8 weights three per comparison: its time, its share of the floor and its time over fp8's), the
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
    weights: str = "bf16"  # or "fp8": the layer measured is block-scaled e4m3

    @property
    def fp8(self) -> bool:
        return self.weights == "fp8"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if v is None else format(v, spec) + suffix


def columns(baselines: list[str], fp8: bool = False) -> list[str]:
    """The table's columns: moefuse's, then one time per baseline, then the comparisons. With fp8
    weights, moefuse's are the fp8 layer's, and each comparison has its time, share of the floor
    and time over fp8's, and its error."""
    moefuse = ["case", "T", "mode", "fp8_ms" if fp8 else "fused_ms", "TFLOP/s", "GB/s", "%floor"]
    moefuse += ["unfused_ms", "f/u"]
    if not fp8:
        return [*moefuse, *(f"{name}_ms" for name in baselines), "speedup", "rel_err"]
    each = [c for name in baselines for c in (f"{name}_ms", f"{name}%floor", f"{name}/fp8")]
    return [*moefuse, *each, "rel_err", *(f"err_{name}" for name in baselines)]


def _cells(r: dict[str, Any], baselines: list[str], fp8: bool = False) -> list[str]:
    moefuse = [
        r["case"], str(r["T"]), r["mode"].split()[0], fmt(r["fused_ms"], ".4f"),
        fmt(r["tflops"], ".1f"), fmt(r["gbps"], ".0f"), fmt(r["pct_floor"], ".1f"),
        fmt(r["unfused_ms"], ".4f"), fmt(r["fused_over_unfused"], ".2f"),
    ]  # fmt: skip
    if not fp8:
        times = [fmt(r.get(f"{name}_ms"), ".4f") for name in baselines]
        return [*moefuse, *times, fmt(r["speedup"], ".2f", "x"), fmt(r.get("err"), ".1e")]
    each = [
        cell
        for name in baselines
        for cell in (
            fmt(r.get(f"{name}_ms"), ".4f"),
            fmt(r.get(f"pct_floor_{name}"), ".1f"),
            fmt(r.get(f"{name}_over_fused"), ".2f", "x"),
        )
    ]
    return [*moefuse, *each, fmt(r.get("err"), ".1e"), *(fmt(r.get(f"err_{n}"), ".1e") for n in baselines)]


def _stage_lines(rows: list[dict[str, Any]]) -> list[str]:
    staged = [r for r in rows if "stages" in r]
    if not staged:
        return []
    names = list(dict.fromkeys(k for r in staged for k in r["stages"]))
    lines = ["", "per-step ms, medians of --reps eager forwards (--stages): " + ", ".join(names)]
    for r in staged:
        cells = " ".join(f"{r['stages'].get(n, float('nan')):.4f}" for n in names)
        lines.append(
            f"{r['case']:<10} {r['T']:>6}  {cells}  gemm2 fused/store {r['gemm2_fused_over_store']:.3f}"
            f", fused/(store + finalize) {r['gemm2_fused_over_store_finalize']:.3f}"
        )
    return lines


_LEGEND = [
    "%floor = max(FLOPs / matmul ceiling, bytes / copy ceiling) / fused time",
    "  (bytes: weights of the experts hit + x + out); f/u = fused / unfused time",
    "speedup = best baseline / fused; rel_err = ||moefuse fused - cupy|| / ||cupy||",
]
_FP8_LEGEND = [
    "%floor = max(FLOPs / matmul ceiling, bytes / copy ceiling) / time, for every implementation",
    "  (bytes: e4m3 weights of the experts hit + their fp32 block scales + x + out);",
    "  fp8_ms: moefuse's fp8 layer, fused finalize; f/u = its fused / unfused time",
    "NAME/fp8 = NAME's time / fp8's (above 1: fp8 is faster); bf16: moefuse's bf16 layer",
    "rel_err = ||moefuse fp8 - cupy (bf16)|| / ||cupy||; err_bf16: moefuse bf16 against cupy;",
    "  err of a baseline: against moefuse bf16",
]


def report(meta: Meta, rows: list[dict[str, Any]]) -> str:
    """The whole text report. A row without "fused_ms" was skipped or failed: dashes, and its
    reason among the notes."""
    c, g = meta.ceilings, meta.gpu
    weights = ", weights fp8 e4m3 with fp32 scales per 128 x 128 block" if meta.fp8 else ""
    lines = [
        f"moefuse bench  {meta.date}  GPU: {g.name} (cc {g.cc}, {g.mem_gib} GiB, "
        + f"L2 {g.l2_bytes >> 20} MiB, driver {g.driver})",
        f"software: moefuse {g.backend} kernels, cupy {g.cupy}, torch {meta.torch or 'n/a'}, "
        f"dtype {meta.dtype}{weights}",
        f"command: {meta.command}",
        f"ceilings: {c.matmul_dtype} matmul 8192^3 {c.matmul_tflops:.1f} TFLOP/s ({c.matmul_via}); "
        + f"1 GiB D2D copy {c.copy_gbps:.0f} GB/s (read + write)",
        f"timing: {meta.timing}",
        f"GPU at the start: {meta.gpu_start}",
        f"GPU at the end:   {meta.gpu_end}",
        "baselines: " + ("; ".join(f"{name}: {what}" for name, what in meta.baselines.items()) or "none"),
        *(f"  {why}" for why in meta.skipped_baselines),
        "",
    ]
    names = list(meta.baselines)
    header = columns(names, meta.fp8)
    table, notes = [header], {}  # note text -> the cases it applies to
    for r in rows:
        where = f"{r['case']} T={r['T']}"
        if "fused_ms" not in r:
            table.append([r["case"], str(r["T"])] + ["-"] * (len(header) - 2))
            notes.setdefault(r.get("skipped") or r.get("failed"), []).append(where)
            continue
        table.append(_cells(r, names, meta.fp8))
        for n in r["notes"]:
            notes.setdefault(n, []).append(where)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        cells = [
            s.ljust(w) if i == 0 else s.rjust(w) for i, (s, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells))
    lines += ["", *(_FP8_LEGEND if meta.fp8 else _LEGEND)]
    lines += _stage_lines(rows)
    many = len(rows) > 1
    for n, cases in notes.items():
        lines.append(f"note ({'all' if many and len(cases) == len(rows) else ', '.join(cases)}): {n}")
    return "\n".join(lines)
