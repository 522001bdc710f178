"""The benchmark and the development tools' shared base (bench.py, tools/*.py, the GPU tests).

Modules, one job each: `shapes` (the named MoE shapes, parsing custom ones), `problems` (routing,
random device fills, the benchmark's cases, the GPU tests' host problems), `dtypes` (bf16/fp16
arithmetic on uint16 views), `timing` (the one timing core), `ceilings` (matmul and copy
ceilings), `baselines` (the CuPy per-expert loop, and torch `_grouped_mm`, transformers, vLLM,
SGLang and FlashInfer where installed; for fp8 weights torch `_scaled_grouped_mm`), `device` (the
GPU, its clocks and power, messages), `runner` (bench.py's cases), `report` (its table), `plot`
(its figure), `variants` (the kernel choices tools force).

torch and the other baselines' packages are imported lazily, by the baselines alone; the core
package `moefuse` never imports them.
"""
