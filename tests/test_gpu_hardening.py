"""Safe however a serving stack calls it (GPU only): every entry point captured in a CUDA graph and
replayed against eager calls while the pool is churned, the caller's workspace, overlapping outputs
refused, a NaN or Inf kept to its own token, out-of-memory before any kernel, MOEFUSE_DEBUG."""

import numpy as np
import pytest

import moefuse
from moefuse import reference
from moefuse.plan import PLAN_ARRAYS
from moefuse_bench.problems import DTYPES, TOLERANCE, moe_problem, randn, random_ids

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("backend")]

HIDDEN, INTER, EXPERTS, TOKENS, TOP_K = 264, 200, 8, 64, 2
REPLAYS = 100
BF16 = DTYPES["bf16"]


def bits(array) -> np.ndarray:
    """A host copy as raw bits: NaNs compare equal, -0 and +0 do not."""
    host = array.get() if hasattr(array, "get") else np.asarray(array)
    return host.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[host.itemsize])


def poisoned(shape, dtype=BF16):
    import cupy

    return cupy.full(shape, np.nan, dtype=dtype)


def only_once(backend):
    """Tests that do not depend on the GEMM kernels run with one backend param."""
    if backend != "sm80":
        pytest.skip("independent of the GEMM backend: runs once, with the sm80 param")


def churn(rng) -> None:
    """Allocate, fill and free blocks of many sizes: memory the pool had handed back gets new
    contents (a graph still using freed memory reads them, or overwrites them)."""
    import cupy

    blocks = [cupy.full(int(n), 0x7F, dtype=cupy.uint8) for n in rng.integers(1 << 10, 1 << 22, 12)]
    del blocks


def capture(fn):
    """`fn()` captured on a new non-default stream: (stream, graph, fn's result)."""
    import cupy

    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        try:
            result = fn()
        finally:
            graph = stream.end_capture()
    return stream, graph, result


def replay_against_eager(rng, stream, replay, refill, captured, eager):
    """REPLAYS times: `refill()` writes new random inputs into the captured buffers, the pool is
    churned, `replay()` launches the graphs on `stream`, and their outputs (`captured()`) must
    equal an eager call's (`eager()`) bit for bit."""
    for _ in range(REPLAYS):
        refill()
        churn(rng)
        replay()
        stream.synchronize()
        for got, want in zip(captured(), eager(), strict=True):
            assert np.array_equal(bits(got), bits(want))


def device_problem(rng, num_tokens=TOKENS, top_k=TOP_K, bias=True):
    p = moe_problem(rng, "bf16", num_tokens, HIDDEN, INTER, EXPERTS, top_k=top_k, bias=bias)
    return p, p.device()


def test_route_captured_replays_like_eager_calls(rng, backend):
    import cupy

    only_once(backend)
    for dtype in (np.float32, BF16):
        logits = cupy.asarray(rng.standard_normal((TOKENS, EXPERTS)).astype(dtype))
        moefuse.route(logits, TOP_K)  # loads the kernels outside the capture
        stream, graph, (weights, ids) = capture(lambda logits=logits: moefuse.route(logits, TOP_K))

        def refill(logits=logits, dtype=dtype):
            logits[...] = cupy.asarray(rng.standard_normal(logits.shape).astype(dtype))

        replay_against_eager(
            rng,
            stream,
            lambda stream=stream, graph=graph: graph.launch(stream),
            refill,
            lambda w=weights, i=ids: (w, i),
            lambda lg=logits: moefuse.route(lg, TOP_K),
        )


def test_plan_and_grouped_gemm_captured_replay_like_eager_calls(rng, backend):
    import cupy

    _, d = device_problem(rng)
    ids = d["topk_ids"]
    routing = moefuse.plan(ids, EXPERTS, tile_m=64)
    a = cupy.asarray(rng.standard_normal((routing.capacity, HIDDEN)).astype(BF16))
    w = d["w2"].transpose(0, 2, 1).copy()  # [E, N=I, K=H]
    moefuse.grouped_gemm(a, w, routing)

    def forward():
        captured_plan = moefuse.plan(ids, EXPERTS, tile_m=64)
        return captured_plan, moefuse.grouped_gemm(a, w, captured_plan)

    stream, graph, (captured_plan, out) = capture(forward)

    def refill():
        ids[...] = cupy.asarray(np.argsort(rng.random((TOKENS, EXPERTS)), axis=1)[:, :TOP_K].astype(np.int32))
        a[...] = cupy.asarray(rng.standard_normal(a.shape).astype(BF16))

    def routed_rows(plan, gemm_out):
        """The plan's arrays, and the GEMM's rows that hold routed pairs (padding is unspecified)."""
        rows = plan.permuted_to_expanded >= 0
        return (*(getattr(plan, name) for name in PLAN_ARRAYS), gemm_out[rows])

    def eager():
        plan = moefuse.plan(ids, EXPERTS, tile_m=64)
        return routed_rows(plan, moefuse.grouped_gemm(a, w, plan))

    def replay():
        graph.launch(stream)

    replay_against_eager(rng, stream, replay, refill, lambda: routed_rows(captured_plan, out), eager)


@pytest.mark.parametrize("fused", [True, False])
def test_fused_moe_and_layer_captured_replay_like_eager_calls(rng, fused):
    """fused_moe with the caller's workspace, and a MoELayer whose workspace grows after the
    capture (a later, larger eager batch): the graphs keep reading valid memory."""
    import cupy

    p, d = device_problem(rng)
    x, weights, ids = d["x"], d["topk_weights"], d["topk_ids"]
    weight_args = (d["w1"], d["w2"])
    kwargs = dict(b1=d["b1"], b2=d["b2"], fused_finalize=fused)
    nbytes = moefuse.workspace_bytes(TOKENS, TOP_K, *weight_args, fused_finalize=fused)
    workspace = cupy.empty(nbytes, dtype=cupy.uint8)
    layer = moefuse.MoELayer(*weight_args, d["b1"], d["b2"])
    out_f, out_l = poisoned((TOKENS, HIDDEN)), poisoned((TOKENS, HIDDEN))

    def forward():
        moefuse.fused_moe(x, *weight_args, weights, ids, out=out_f, workspace=workspace, **kwargs)
        layer(x, weights, ids, out=out_l, fused_finalize=fused)

    forward()  # modules loaded and the layer's call kind carved outside the capture
    stream, graph, _ = capture(forward)
    _, big = device_problem(rng, num_tokens=3000)
    layer(big["x"], big["topk_weights"], big["topk_ids"], fused_finalize=fused)  # grows its workspace

    def refill():
        x[...] = cupy.asarray(rng.standard_normal(x.shape).astype(BF16))
        weights[...] = cupy.asarray(rng.random(weights.shape).astype(np.float32))
        ids[...] = cupy.asarray(random_ids(rng, TOKENS, TOP_K, EXPERTS, skew=0.3))

    def eager():
        want = moefuse.fused_moe(x, *weight_args, weights, ids, **kwargs)
        return want, want, want

    cold = moefuse.MoELayer(*weight_args, d["b1"], d["b2"])  # first called under capture
    out_c = poisoned((TOKENS, HIDDEN))
    _, cold_graph, _ = capture(lambda: cold(x, weights, ids, out=out_c, fused_finalize=fused))

    def both_graphs():
        graph.launch(stream)
        cold_graph.launch(stream)

    replay_against_eager(rng, stream, both_graphs, refill, lambda: (out_f, out_l, out_c), eager)
    want = reference.moe(x.get(), p.w1, p.w2, weights.get(), ids.get(), p.b1, p.b2)
    assert reference.relative_error(out_l.get(), want) < TOLERANCE["bf16"]


def test_capture_refuses_what_would_leave_the_graph_on_freed_memory(rng, backend):
    import cupy

    only_once(backend)
    _, d = device_problem(rng)
    args = (d["x"], d["w1"], d["w2"], d["topk_weights"], d["topk_ids"])
    moefuse.fused_moe(*args)
    with pytest.raises(ValueError, match="fused_moe under CUDA graph capture needs workspace="):
        capture(lambda: moefuse.fused_moe(*args))
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    strided_x = cupy.asarray(np.repeat(d["x"].get(), 2, axis=1))[:, ::2]
    with pytest.raises(ValueError, match=r"x is not C-contiguous.*freed while the graph still reads it"):
        capture(lambda: layer(strided_x, d["topk_weights"], d["topk_ids"]))
    logits64 = cupy.asarray(rng.standard_normal((TOKENS, EXPERTS)))
    with pytest.raises(ValueError, match="router_logits is float64"):
        capture(lambda: moefuse.route(logits64, TOP_K))


def counting_allocations():
    """(allocator, calls): CuPy's pool behind a counter of every allocation asked of it."""
    import cupy

    pool, calls = cupy.get_default_memory_pool(), []

    def allocate(nbytes):
        calls.append(nbytes)
        return pool.malloc(nbytes)

    return allocate, calls


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("out_dtype", [None, np.float32])
def test_caller_workspace_of_the_queried_size_and_nothing_allocated(rng, fused, out_dtype):
    import cupy

    top_k = 2 if fused else 4
    p, d = device_problem(rng, num_tokens=300, top_k=top_k)
    args = (d["x"], d["w1"], d["w2"], d["topk_weights"], d["topk_ids"])
    kwargs = dict(b1=d["b1"], b2=d["b2"], fused_finalize=fused, out_dtype=out_dtype)
    nbytes = moefuse.workspace_bytes(300, top_k, d["w1"], d["w2"], fused_finalize=fused, out_dtype=out_dtype)
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    assert nbytes == layer.workspace_bytes(300, top_k, fused_finalize=fused, out_dtype=out_dtype)
    assert moefuse.workspace_bytes(0, top_k, d["w1"], d["w2"]) == 0  # an empty batch launches nothing
    layer.reserve(0, top_k)
    out_type = BF16 if out_dtype is None else out_dtype
    workspace, out = cupy.full(nbytes, 0xFF, dtype=cupy.uint8), poisoned((300, HIDDEN), out_type)
    moefuse.fused_moe(*args, out=out, workspace=workspace, **kwargs)  # modules loaded

    out.fill(np.nan)
    with pytest.raises(ValueError, match=r"workspace has 4096 bytes; this call needs \d+"):
        moefuse.fused_moe(*args, out=out, workspace=workspace[:4096], **kwargs)
    assert bool(cupy.isnan(out.astype(cupy.float32)).all()), "a kernel ran before the size check"
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    allocate, calls = counting_allocations()
    for run in (
        lambda: moefuse.fused_moe(*args, out=out, workspace=workspace, **kwargs),
        lambda: layer(*args[:1], *args[3:], out=out, workspace=workspace, fused_finalize=fused),
    ):
        workspace.fill(0xFF)
        out.fill(np.nan)
        cupy.cuda.set_allocator(allocate)
        try:
            run()
        finally:
            cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
        assert calls == [], f"allocated {calls} with the caller's workspace and out"
        assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


def test_torch_buffers_serve_as_workspace_and_out(rng, backend):
    only_once(backend)
    torch = pytest.importorskip("torch")
    p, d = device_problem(rng)
    nbytes = moefuse.workspace_bytes(TOKENS, TOP_K, d["w1"], d["w2"])
    workspace = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    out = torch.full((TOKENS, HIDDEN), float("nan"), dtype=torch.bfloat16, device="cuda")
    moefuse.fused_moe(
        d["x"],
        d["w1"],
        d["w2"],
        d["topk_weights"],
        d["topk_ids"],
        b1=d["b1"],
        b2=d["b2"],
        out=out,
        workspace=workspace,
    )
    torch.cuda.synchronize()
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    assert reference.relative_error(out.float().cpu().numpy(), want) < TOLERANCE["bf16"]


def test_outputs_overlapping_inputs_are_refused_before_any_launch(rng, backend):
    import cupy

    only_once(backend)
    p, d = device_problem(rng)
    x, w1, w2, weights, ids = d["x"], d["w1"], d["w2"], d["topk_weights"], d["topk_ids"]
    x_bits = bits(x)
    with pytest.raises(ValueError, match="out overlaps x"):
        moefuse.fused_moe(x, w1, w2, weights, ids, out=x)
    inside_w2 = w2.reshape(-1)[: TOKENS * HIDDEN].reshape(TOKENS, HIDDEN)
    with pytest.raises(ValueError, match="out overlaps w2"):
        moefuse.MoELayer(w1, w2)(x, weights, ids, out=inside_w2)
    nbytes = moefuse.workspace_bytes(TOKENS, TOP_K, w1, w2)
    with pytest.raises(ValueError, match="workspace overlaps topk_ids"):
        moefuse.fused_moe(x, w1, w2, weights, ids, workspace=ids.reshape(-1).view(cupy.uint8))
    shared = cupy.empty(nbytes + x.nbytes, dtype=cupy.uint8)
    out_in_workspace = shared[: x.nbytes].view(BF16).reshape(x.shape)
    with pytest.raises(ValueError, match="out overlaps workspace"):
        moefuse.fused_moe(x, w1, w2, weights, ids, out=out_in_workspace, workspace=shared)
    assert np.array_equal(bits(x), x_bits)

    # Inputs may alias each other: both biases are views of one buffer.
    biases = cupy.empty(EXPERTS * (2 * INTER + HIDDEN), dtype=BF16)
    b1 = biases[: EXPERTS * 2 * INTER].reshape(EXPERTS, 2 * INTER)
    b2 = biases[EXPERTS * 2 * INTER :].reshape(EXPERTS, HIDDEN)
    b1[...], b2[...] = d["b1"], d["b2"]
    out = moefuse.fused_moe(x, w1, w2, weights, ids, b1=b1, b2=b2)
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


@pytest.mark.parametrize("fused", [True, False])
def test_a_nan_or_inf_reaches_only_its_own_token(rng, fused):
    """Poisoned activations and a poisoned router weight: every other token's row is bitwise the
    clean run's (k = 2: both finalize paths are deterministic), the poisoned ones are not finite."""
    import cupy

    p, d = device_problem(rng, num_tokens=300)
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    clean = bits(layer(d["x"], d["topk_weights"], d["topk_ids"], fused_finalize=fused))
    x, weights = p.x.copy(), p.topk_weights.copy()
    x[5, 7], x[100, 0], x[101, 3], weights[200, 1] = np.nan, np.inf, -np.inf, np.nan
    out = layer(cupy.asarray(x), cupy.asarray(weights), d["topk_ids"], fused_finalize=fused).get()
    poisoned_tokens = [5, 100, 101, 200]
    others = np.setdiff1d(np.arange(300), poisoned_tokens)
    assert np.array_equal(bits(out[others]), clean[others])
    for t in poisoned_tokens:
        assert not np.isfinite(out[t].astype(np.float32)).all(), f"token {t}'s row is finite"


def test_out_of_memory_raises_before_any_kernel_and_the_layer_recovers(rng, backend):
    """A batch whose workspace is twice the free memory: CuPy's OutOfMemoryError, `out` untouched,
    and the same layer then runs a small batch correctly (reserve() too)."""
    import cupy

    only_once(backend)
    hidden, inter, top_k = 64, 8192, 8
    p = moe_problem(rng, "bf16", 50, hidden, inter, EXPERTS, top_k=top_k, bias=False)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    pool = cupy.get_default_memory_pool()
    pool.free_all_blocks()
    free = cupy.cuda.runtime.memGetInfo()[0]
    per_token = layer.workspace_bytes(4096, top_k) / 4096
    num_tokens = int(2 * free / per_token)
    assert num_tokens * top_k < 2**31
    x = randn((num_tokens, hidden), 1.0, BF16)
    ids = cupy.random.randint(0, EXPERTS, (num_tokens, top_k), dtype=cupy.int32)
    weights = cupy.full((num_tokens, top_k), 1.0 / top_k, dtype=cupy.float32)
    out = poisoned((num_tokens, hidden))
    with pytest.raises(cupy.cuda.memory.OutOfMemoryError):
        layer(x, weights, ids, out=out)
    sample = out.view(cupy.uint16)[:: max(1, num_tokens // 1000)]
    assert bool(((sample & 0x7FFF) > 0x7F80).all()), "a kernel ran: out is no longer all NaN"
    with pytest.raises(cupy.cuda.memory.OutOfMemoryError):
        layer.reserve(num_tokens, top_k)
    del x, ids, weights, out
    got = layer(d["x"], d["topk_weights"], d["topk_ids"]).get()
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)
    assert reference.relative_error(got, want) < TOLERANCE["bf16"]


def test_debug_switch_raises_on_the_first_bad_id_or_weight(rng, backend, monkeypatch):
    only_once(backend)
    p, d = device_problem(rng, num_tokens=40, bias=False)
    x, w1, w2 = d["x"], d["w1"], d["w2"]
    ids, weights = d["topk_ids"].copy(), d["topk_weights"].copy()
    ids[13, 1] = EXPERTS + 3
    weights[7, 0] = np.inf
    monkeypatch.setenv("MOEFUSE_DEBUG", "1")
    with pytest.raises(ValueError, match=r"topk_ids\[13, 1\] = 11 is not an expert id"):
        moefuse.fused_moe(x, w1, w2, d["topk_weights"], ids)
    with pytest.raises(ValueError, match=r"topk_weights\[7, 0\] = inf is not finite"):
        moefuse.fused_moe(x, w1, w2, weights, d["topk_ids"])
    with pytest.raises(ValueError, match=r"topk_ids\[13, 1\] = 11 is not an expert id"):
        moefuse.plan(ids, EXPERTS)
    good = moefuse.fused_moe(x, w1, w2, d["topk_weights"], d["topk_ids"]).get()
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)
    assert reference.relative_error(good, want) < TOLERANCE["bf16"]

    monkeypatch.delenv("MOEFUSE_DEBUG")  # without it, an id past the experts is a pair routed elsewhere
    got = moefuse.fused_moe(x, w1, w2, d["topk_weights"], ids).get()
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, ids.get())
    assert reference.relative_error(got, want) < TOLERANCE["bf16"]


def test_a_workspace_sized_for_t_serves_every_smaller_batch(rng, backend):
    """An OLMoE-like shape (k = 8 of 64 experts, I = 1024), where Hopper's swapped family reads x
    in permuted order only between 96 and 192 rows per expert (T = 768 ... 1536): its layouts
    there are larger than at T = 2048. reserve(2048) and workspace_bytes(2048) cover them all."""
    import cupy

    hidden, inter, experts, top_k, most = 2048, 1024, 64, 8, 2048
    w1 = randn((experts, 2 * inter, hidden), hidden**-0.5, BF16)
    w2 = randn((experts, hidden, inter), inter**-0.5, BF16)
    x = randn((most, hidden), 1.0, BF16)
    ids = cupy.asarray(random_ids(rng, most, top_k, experts))
    weights = cupy.full((most, top_k), 1.0 / top_k, dtype=cupy.float32)
    out = cupy.empty((most, hidden), dtype=BF16)
    layer = moefuse.MoELayer(w1, w2)
    layer.reserve(most, top_k)
    workspace = cupy.empty(moefuse.workspace_bytes(most, top_k, w1, w2), dtype=cupy.uint8)
    assert workspace.nbytes == layer.workspace_bytes(most, top_k)
    generation = layer._workspace.generation
    allocate, calls = counting_allocations()
    for tokens in (1, 700, 767, 768, 1000, 1536, 1537, 2048):
        args = (x[:tokens], weights[:tokens], ids[:tokens])
        cupy.cuda.set_allocator(allocate)
        try:
            layer(*args, out=out[:tokens])
            moefuse.fused_moe(*args[:1], w1, w2, *args[1:], out=out[:tokens], workspace=workspace)
        finally:
            cupy.cuda.set_allocator(cupy.get_default_memory_pool().malloc)
        assert calls == [] and layer._workspace.generation == generation, f"T={tokens} allocated"
