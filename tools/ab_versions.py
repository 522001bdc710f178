"""Same-process A/B of whole forwards: an older moefuse ("before") against this one ("after").

    tools/prepare_before.sh REV build/before    # REV's package as build/before/moefuse_before
    python tools/ab_versions.py --before build/before [--shape mixtral,deepseek,qwen3]
        [--tokens 1,16,128,1024,4096,16384] [--weights bf16|fp8] [--rounds 5] [--reps 20]
        [--sets 4] [--stages] [--json FILE]

DIR holds a copy of an older package renamed `moefuse_before` (relative imports only) and its
`cuda_src` beside it, where the old package looks for its sources. Both packages build a MoELayer
over the same weight arrays. Per case, rounds alternate before, after, before, ... so that drift
of the machine hits both alike; a round times `reps` forwards with CUDA events, the L2 flushed
before each (outside the events) and the inputs rotating over `sets` input sets, as CUDA-graph
replays for T <= 128 (eager above, as bench.py). Medians per case over all rounds. The outputs
must agree (relative error < 1e-2 in fp32). Prints one line per case (before ms, after ms,
after/before), then the worst and the median ratio, and the GPU; exits 1 if outputs disagree or
a case fails. `--host-calls N` adds each package's host time per eager call (N calls back to
back, no sync). `--stages` adds each step's median (`MoELayer.steps`, eager, events between the
steps, rounds alternating as above) for the steps both packages name alike. The default grid (3
shapes x 6 token counts) took 40 s of an H100 (2026-12-06), both packages' kernel compiles
included. Pointed at a copy of the current tree (prepare_before.sh HEAD), it measures the noise of
the method itself.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import cupy as cp

import moefuse
from moefuse_bench.device import free_pools, short
from moefuse_bench.dtypes import rel_err
from moefuse_bench.problems import DTYPES, expert_layer, make_case, random_weights
from moefuse_bench.shapes import NAMES_HELP, SHAPES, Shape, parse_shapes, parse_tokens
from moefuse_bench.timing import (
    L2Flush,
    Timing,
    event_samples,
    forward_runner,
    host_seconds,
    layer_step_samples,
    medians,
)

MAX_REL_ERR = 1e-2


def load_before(directory: Path) -> ModuleType:
    """Import DIR/moefuse_before as the package `moefuse_before` (beside `moefuse`)."""
    package = directory / "moefuse_before"
    init = package / "__init__.py"
    if not init.is_file() or not (directory / "cuda_src").is_dir():
        raise FileNotFoundError(
            f"{directory} needs moefuse_before/__init__.py and cuda_src/ (tools/prepare_before.sh REV DIR)"
        )
    spec = importlib.util.spec_from_file_location(
        "moefuse_before", init, submodule_search_locations=[str(package)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # before it runs: its relative imports look the package up here
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class Result:
    shape: str
    T: int
    mode: str  # graph or eager
    before_ms: float
    after_ms: float
    rel_err: float  # ||after - before|| / ||before|| on the first input set, fp32
    before_host_us: float | None = None  # host time of one eager call (--host-calls)
    after_host_us: float | None = None
    before_steps: dict[str, float] | None = None  # each step's median ms (--stages)
    after_steps: dict[str, float] | None = None

    @property
    def ratio(self) -> float:
        return self.after_ms / self.before_ms


def time_case(layers: dict[str, Any], shape: Shape, tokens: int, stream, flush: L2Flush, args) -> Result:
    """Both layers on `tokens` tokens: the outputs compared once, then rounds alternating them."""
    case = make_case(shape, tokens, dtype=DTYPES[args.dtype], n_sets=args.sets, seed=args.seed)
    outs = {name: cp.empty((tokens, shape.H), dtype=case.dtype) for name in layers}
    with stream:
        for name, layer in layers.items():  # also the first calls: compiles, workspace
            layer(*case.sets[0], out=outs[name])
        err = rel_err(outs["after"], outs["before"])
    graph = tokens <= args.graph_max_tokens
    runs = {
        name: forward_runner(layer, case.sets, stream, graph=graph, out=outs[name])
        for name, layer in layers.items()
    }
    timing = Timing(reps=args.reps, warmup=2, rest=args.rest)
    samples: dict[str, list[float]] = {name: [] for name in layers}
    for _ in range(args.rounds):
        for name, (run, _) in runs.items():
            samples[name] += event_samples(run, stream, timing, n_sets=len(case.sets), flush=flush)
    mode = "/".join(dict.fromkeys(mode for _, mode in runs.values()))  # one, unless a capture failed
    median = {name: statistics.median(ms) for name, ms in samples.items()}
    host = {name: host_us(layer, case, outs[name], stream, args.host_calls) for name, layer in layers.items()}
    steps = step_medians(layers, case, outs, stream, timing, flush, args.rounds) if args.stages else {}
    return Result(
        shape.name,
        tokens,
        mode,
        median["before"],
        median["after"],
        err,
        host["before"],
        host["after"],
        steps.get("before"),
        steps.get("after"),
    )


def step_medians(layers, case, outs, stream, timing: Timing, flush: L2Flush, rounds: int) -> dict:
    """Each layer's median ms per step of an eager forward on the first input set, over `rounds`
    rounds alternating the layers."""
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in layers}
    for _ in range(rounds):
        for name, layer in layers.items():
            got = layer_step_samples(layer, case.sets[0], stream, timing, flush, out=outs[name])
            for step, ms in got.items():
                samples[name].setdefault(step, []).extend(ms)
    return {name: medians(by_step) for name, by_step in samples.items()}


def host_us(layer, case, out, stream, calls: int) -> float | None:
    """Microseconds the host spends issuing one eager forward: `calls` back to back, no sync."""
    if not calls:
        return None
    return host_seconds(lambda i: layer(*case.sets[i % len(case.sets)], out=out), stream, calls) * 1e6


def line(r: Result) -> str:
    disagree = "" if r.rel_err < MAX_REL_ERR else "  OUTPUTS DISAGREE"
    host = "" if r.after_host_us is None else f"  host us {r.before_host_us:.0f} -> {r.after_host_us:.0f}"
    text = (
        f"{r.shape:9} T={r.T:6}  {r.mode:5}  before {r.before_ms:9.4f} ms  after {r.after_ms:9.4f} ms  "
        f"after/before {r.ratio:.3f}  rel err {r.rel_err:.1e}{host}{disagree}"
    )
    if r.before_steps is not None:
        common = [step for step in r.after_steps if step in r.before_steps]
        cells = (f"{s} {r.before_steps[s]:.4f} -> {r.after_steps[s]:.4f}" for s in common)
        text += "\n    steps ms, before -> after: " + ", ".join(cells)
    return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--before", type=Path, required=True, metavar="DIR", help="DIR/moefuse_before and DIR/cuda_src")
    add("--shape", action="append", default=[], help=f"{NAMES_HELP} (default: the three names)")
    add("--tokens", default="1,16,128,1024,4096,16384", help="comma-separated token counts T")
    add("--dtype", choices=tuple(DTYPES), default="bf16")
    add("--weights", choices=("bf16", "fp8"), default="bf16", help="fp8: e4m3 with 128 x 128 block scales")
    add("--rounds", type=int, default=5, help="alternating rounds per case")
    add("--reps", type=int, default=20, help="timed forwards per round and package")
    add("--sets", type=int, default=4, help="input sets rotated between repetitions")
    add("--graph-max-tokens", type=int, default=128, help="CUDA-graph replays for T <= this")
    add("--seed", type=int, default=0)
    add("--rest", type=float, default=0.5, help="idle seconds before each measurement (as bench.py)")
    add("--after-first", action="store_true", help="build and run the current package first")
    add("--host-calls", type=int, default=0, help="also time the host side of N eager calls per package")
    add("--stages", action="store_true", help="also time each step of the forward (MoELayer.steps)")
    add("--json", metavar="FILE", help="also write the results to FILE")
    args = parser.parse_args()
    try:
        args.shapes = parse_shapes(args.shape) or list(SHAPES.values())
        args.tokens = parse_tokens(args.tokens)
    except ValueError as e:
        parser.error(str(e))
    if min(args.rounds, args.reps, args.sets) < 1:
        parser.error("--rounds, --reps and --sets must be positive")
    return args


def main() -> int:
    args = parse_args()
    try:
        before = load_before(args.before.resolve())
    except FileNotFoundError as e:
        print(f"ab_versions.py: {e}", file=sys.stderr)
        return 2
    cp.random.seed(args.seed)
    stream = cp.cuda.Stream(non_blocking=True)
    results: list[Result] = []
    failed: list[str] = []
    with stream:
        flush = L2Flush(stream)
        for shape in args.shapes:
            w1, w2 = random_weights(shape, DTYPES[args.dtype])
            order = ("after", "before") if args.after_first else ("before", "after")
            packages = {"before": before, "after": moefuse}
            fp8 = args.weights == "fp8"
            layers = {name: expert_layer(packages[name], w1, w2, fp8=fp8) for name in order}
            for T in args.tokens:
                try:
                    r = time_case(layers, shape, T, stream, flush, args)
                except Exception as e:
                    failed.append(f"{shape.name} T={T}: {short(e, 200)}")
                    print(f"{shape.name:9} T={T:6}  failed: {failed[-1]}", flush=True)
                    continue
                finally:
                    free_pools()
                results.append(r)
                print(line(r), flush=True)
            del layers, w1, w2
            free_pools()
    disagree = [f"{r.shape} T={r.T}" for r in results if not r.rel_err < MAX_REL_ERR]  # NaN too
    summary: dict[str, Any] = {}
    if results:
        worst = max(results, key=lambda r: r.ratio)
        summary = {"worst": worst.ratio, "median": statistics.median(r.ratio for r in results)}
        print(
            f"worst after/before {worst.ratio:.3f} ({worst.shape} T={worst.T}), "
            f"median {summary['median']:.3f} over {len(results)} cases"
        )
    if disagree:
        print(f"outputs disagree (rel err >= {MAX_REL_ERR}): {', '.join(disagree)}")
    print(f"GPU: {moefuse.gpu_name()}")
    if args.json:
        record = {
            "command": shlex.join(["python", *sys.argv]),
            "gpu": moefuse.gpu_name(),
            "before": str(args.before),
            "cases": [{**asdict(r), "ratio": r.ratio} for r in results],
            **summary,
            "disagree": disagree,
            "failed": failed,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 1 if disagree or failed else 0


if __name__ == "__main__":
    sys.exit(main())
