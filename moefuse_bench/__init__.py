"""The benchmark and the development tools' shared base (bench.py, tools/*.py, the GPU tests).

Modules, one job each: `shapes` (the named MoE shapes, parsing custom ones), `problems` (routing,
random device fills, the benchmark's cases, the GPU tests' host problems), `dtypes` (bf16/fp16
arithmetic on uint16 views), `timing` (the one timing core), `ceilings` (matmul and copy
ceilings), `baselines` (CuPy per-expert and torch `_grouped_mm`), `device` (the GPU, messages),
`runner` (bench.py's cases), `report` (its table), `variants` (the kernel choices tools force).

torch is imported lazily, by the torch baseline alone; the core package `moefuse` never imports it.
"""
