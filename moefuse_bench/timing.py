"""The one timing core: idle and warm-up, CUDA-event medians over rotating input sets with the L2
flushed outside the events, CUDA-graph capture of a callable, and per-step times of
`MoELayer.steps`.

Everything is enqueued on the caller's stream, made current here, since moefuse and CuPy launch
on the current stream.
"""

from __future__ import annotations

import contextlib
import functools
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import cupy as cp

from .device import l2_bytes, log, short

WARM_SECONDS = 0.05  # of warm-up calls at least: the clock climbs back from idle in a few ms
MIN_REPS = 5  # what a cut for max_seconds leaves at least

Steps = Sequence[tuple[str, Callable[[], object]]]


@dataclass(frozen=True)
class Timing:
    """How one measurement runs: `rest` seconds of idle GPU first (every measurement then starts
    from the same power state, not from whatever the one before left), then at least `warmup`
    calls and WARM_SECONDS of them, then `reps` timed repetitions, cut (to MIN_REPS at least) for
    slow calls so that a measurement takes about `max_seconds`."""

    reps: int = 30
    warmup: int = 5
    max_seconds: float = float("inf")
    rest: float = 0.0


class L2Flush:
    """Calling it enqueues a memset over 4x the L2 size (128 MiB at least) on `stream`: called
    before a repetition's start event, it evicts the last one's data without being timed."""

    def __init__(self, stream: cp.cuda.Stream) -> None:
        self.stream = stream
        self.buffer = cp.empty(max(128 << 20, 4 * l2_bytes()), dtype=cp.uint8)

    @property
    def nbytes(self) -> int:
        return self.buffer.nbytes

    def __call__(self) -> None:
        cp.cuda.runtime.memsetAsync(self.buffer.data.ptr, 0, self.buffer.nbytes, self.stream.ptr)


def idle(stream: cp.cuda.Stream, seconds: float) -> None:
    """Wait for `stream`, then leave the GPU idle `seconds`."""
    stream.synchronize()
    time.sleep(seconds)


def warm_up(fn: Callable[[int], object], stream: cp.cuda.Stream, calls: int, rest: float = 0.0) -> float:
    """Idle `rest` seconds, then call fn(i) at least `calls` times and for at least WARM_SECONDS.
    Returns the seconds per call."""
    with stream:
        idle(stream, rest)
        t0, done = time.perf_counter(), 0
        while done < max(1, calls) or time.perf_counter() - t0 < WARM_SECONDS:
            fn(done)
            done += 1
            if done >= calls:  # past the counted calls, wait for each: the time check then holds
                stream.synchronize()
        stream.synchronize()
    return (time.perf_counter() - t0) / done


def event_samples(
    fn: Callable[[int], object],
    stream: cp.cuda.Stream,
    timing: Timing,
    *,
    n_sets: int = 1,
    flush: Callable[[], object] | None = None,
) -> list[float]:
    """Milliseconds of each timed fn(i), i rotating over `n_sets` input sets, by CUDA events;
    `flush` runs before each repetition's start event."""
    per_call = warm_up(lambda i: fn(i % n_sets), stream, timing.warmup, timing.rest)
    reps = timing.reps
    if per_call * reps > timing.max_seconds:
        reps = min(reps, max(MIN_REPS, int(timing.max_seconds / per_call)))
    events = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(reps)]
    with stream:
        for r, (start, end) in enumerate(events):
            if flush is not None:
                flush()
            start.record(stream)
            fn(r % n_sets)
            end.record(stream)
        stream.synchronize()
    return [cp.cuda.get_elapsed_time(s, e) for s, e in events]


def host_seconds(fn: Callable[[int], object], stream: cp.cuda.Stream, calls: int) -> float:
    """Seconds the host spends per call of fn(i), `calls` of them back to back with no sync in
    between (the GPU may still be running them): an eager forward's host time."""
    with stream:
        stream.synchronize()
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        elapsed = time.perf_counter() - start
        stream.synchronize()
    return elapsed / calls


def median_ms(fn: Callable[[int], object], stream: cp.cuda.Stream, timing: Timing, **kwargs: Any) -> float:
    """The median of `event_samples` (n_sets, flush: the same)."""
    return statistics.median(event_samples(fn, stream, timing, **kwargs))


def capture(stream: cp.cuda.Stream, call: Callable[[], object]) -> cp.cuda.graph.Graph:
    """A CUDA graph of `call` captured on `stream` (non-blocking); the capture is ended even when
    `call` fails, so that the stream stays usable."""
    with stream:
        stream.synchronize()
        stream.begin_capture()
        try:
            call()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.end_capture()
            raise
        return stream.end_capture()


def replays_or_calls(
    calls: Sequence[Callable[[], object]], stream: cp.cuda.Stream, graph: bool
) -> tuple[Callable[[int], object], str]:
    """(run(i), mode): calls[i]() eagerly, or replays of one graph captured per call; should a
    capture fail, eager calls again (mode "eager (capture failed)")."""
    if not graph:
        return (lambda i: calls[i]()), "eager"
    try:
        graphs = [capture(stream, call) for call in calls]
    except Exception as e:
        log(f"  warning: CUDA graph capture failed ({short(e)}); timing eager calls")
        return (lambda i: calls[i]()), "eager (capture failed)"
    return (lambda i: graphs[i].launch(stream)), "graph"


def forward_runner(
    layer: Any,
    sets: Sequence[Sequence[Any]],
    stream: cp.cuda.Stream,
    *,
    graph: bool,
    out: cp.ndarray,
    fused: bool | None = None,
) -> tuple[Callable[[int], object], str]:
    """`replays_or_calls` over whole forwards of a MoELayer, one per input set (x, weights, ids),
    all into `out` (a call with `out` allocates nothing, so it can be captured)."""
    calls = [functools.partial(layer, x, w, ids, out=out, fused_finalize=fused) for x, w, ids in sets]
    return replays_or_calls(calls, stream, graph)


def step_samples(
    steps: Steps, stream: cp.cuda.Stream, timing: Timing, flush: Callable[[], object] | None = None
) -> dict[str, list[float]]:
    """Milliseconds of each step of an eager forward (`MoELayer.steps`) in `timing.reps`
    repetitions (not cut), events between the steps."""

    def forward(_: int) -> None:
        for _, launch in steps:
            launch()

    warm_up(forward, stream, timing.warmup, timing.rest)
    samples: dict[str, list[float]] = {name: [] for name, _ in steps}
    with stream:
        for _ in range(timing.reps):
            if flush is not None:
                flush()
            events = [cp.cuda.Event() for _ in range(len(steps) + 1)]
            events[0].record(stream)
            for (_, launch), event in zip(steps, events[1:], strict=True):
                launch()
                event.record(stream)
            stream.synchronize()
            for (name, _), start, end in zip(steps, events, events[1:], strict=False):
                samples[name].append(cp.cuda.get_elapsed_time(start, end))
    return samples


def layer_step_samples(
    layer: Any,
    inputs: Sequence[Any],
    stream: cp.cuda.Stream,
    timing: Timing,
    flush: Callable[[], object] | None = None,
    *,
    out: cp.ndarray | None = None,
    fused: bool | None = None,
) -> dict[str, list[float]]:
    """`step_samples` of one layer's forward on one input set (x, weights, ids). The steps are
    built here, under whatever `moefuse.override` the caller is in."""
    x, w, ids = inputs
    with stream:
        _, steps = layer.steps(x, w, ids, out=out, fused_finalize=fused)
    return step_samples(steps, stream, timing, flush)


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {name: statistics.median(v) for name, v in samples.items()}
