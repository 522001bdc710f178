"""Grouped GEMM and the fused MoE forward against float64 references (GPU only)."""

import numpy as np
import pytest

import moefuse
from moefuse import reference
from moefuse_bench.problems import DTYPES, TOLERANCE, moe_problem, random_ids

pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("backend")]


# H and I are not multiples of the N tile (128 / 64) nor H of the K tile (32): every edge is hit.
HIDDEN, INTER, EXPERTS = 264, 200, 8


def poisoned(shape, dtype):
    import cupy

    return cupy.full(shape, np.nan, dtype=dtype)


def poison_workspace(layer, num_tokens, top_k):
    """NaN-fill (0xFF bytes) the layer's workspace so a read of anything unwritten shows."""
    layer.reserve(num_tokens, top_k, fused_finalize=False)
    layer._workspace._buffer.fill(0xFF)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("num_tokens", [1, 7, 128, 1000])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tile_m", [64, 128])
def test_grouped_gemm(rng, dtype, num_tokens, bias, tile_m):
    import cupy

    top_k = 2
    ids = random_ids(rng, num_tokens, top_k, EXPERTS)
    routing = moefuse.plan(cupy.asarray(ids), EXPERTS, tile_m=tile_m)
    assert routing.tile_m == tile_m
    a = rng.standard_normal((routing.capacity, INTER)).astype(DTYPES[dtype])
    w = (rng.standard_normal((EXPERTS, HIDDEN, INTER)) * INTER**-0.5).astype(DTYPES[dtype])
    b = (rng.standard_normal((EXPERTS, HIDDEN)) * 0.1).astype(DTYPES[dtype]) if bias else None
    out = poisoned((routing.capacity, HIDDEN), DTYPES[dtype])
    moefuse.grouped_gemm(
        cupy.asarray(a), cupy.asarray(w), routing, bias=None if b is None else cupy.asarray(b), out=out
    )
    rows, want = reference.grouped_gemm(
        a, w, routing.permuted_to_expanded.get(), routing.expert_offsets.get(), b
    )
    assert rows.size == num_tokens * top_k
    assert reference.relative_error(out.get()[rows], want) < TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("num_tokens", [1, 7, 128, 1000])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_fused_moe(rng, dtype, num_tokens, bias, fused):
    p = moe_problem(rng, dtype, num_tokens, HIDDEN, INTER, EXPERTS, top_k=2, bias=bias)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    poison_workspace(layer, num_tokens, 2)
    out = poisoned((num_tokens, HIDDEN), DTYPES[dtype])
    layer(d["x"], d["topk_weights"], d["topk_ids"], out=out, fused_finalize=fused)
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    assert reference.relative_error(out.get(), want) < TOLERANCE[dtype]


@pytest.mark.parametrize("fused", [True, False])
def test_many_experts_skew_and_fp32_output(rng, fused):
    p = moe_problem(rng, "bf16", 777, 256, 128, 64, top_k=6, bias=True, skew=0.9)
    d = p.device()
    out = moefuse.fused_moe(
        d["x"],
        d["w1"],
        d["w2"],
        d["topk_weights"],
        d["topk_ids"],
        b1=d["b1"],
        b2=d["b2"],
        fused_finalize=fused,
        out_dtype=np.float32,
    )
    assert out.dtype == np.float32
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


@pytest.mark.parametrize("fused", [True, False])
def test_expert_parallel_slice_and_dropped_ids(rng, fused):
    import cupy

    p = moe_problem(rng, "bf16", 300, HIDDEN, INTER, 16, top_k=4, bias=True)
    p.topk_ids[rng.random(p.topk_ids.shape) < 0.1] = -1
    first, local = 4, 6
    d = p.device()
    sl = slice(first, first + local)
    layer = moefuse.MoELayer(
        d["w1"][sl], d["w2"][sl], d["b1"][sl], d["b2"][sl], first_expert=first, num_experts=16
    )
    out = layer(
        d["x"], cupy.asarray(p.topk_weights.astype(DTYPES["bf16"])), d["topk_ids"], fused_finalize=fused
    )
    want = reference.moe(
        p.x,
        p.w1[sl],
        p.w2[sl],
        p.topk_weights.astype(DTYPES["bf16"]),
        p.topk_ids,
        p.b1[sl],
        p.b2[sl],
        first_expert=first,
    )
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


def test_deterministic_path_is_bitwise_reproducible(rng):
    p = moe_problem(rng, "bf16", 1000, HIDDEN, INTER, EXPERTS, top_k=8, bias=True)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    first = layer(d["x"], d["topk_weights"], d["topk_ids"], fused_finalize=False).get()
    for _ in range(3):
        again = layer(d["x"], d["topk_weights"], d["topk_ids"], fused_finalize=False).get()
        assert np.array_equal(first.view(np.uint16), again.view(np.uint16))


@pytest.mark.parametrize("num_tokens, hidden, inter", [(1000, HIDDEN, INTER), (1, 512, 2048)])
def test_fused_path_with_two_slots_is_bitwise_reproducible(rng, num_tokens, hidden, inter):
    """Also at decode, where a deep GEMM2 would split K if k were 3 or more."""
    p = moe_problem(rng, "bf16", num_tokens, hidden, inter, EXPERTS, top_k=2, bias=False, skew=0.5)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    first = layer(d["x"], d["topk_weights"], d["topk_ids"]).get()
    for _ in range(3):
        again = layer(d["x"], d["topk_weights"], d["topk_ids"]).get()
        assert np.array_equal(first.view(np.uint16), again.view(np.uint16))


def test_env_switch_forces_the_deterministic_path(rng, monkeypatch):
    p = moe_problem(rng, "bf16", 200, HIDDEN, INTER, EXPERTS, top_k=4, bias=False)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    deterministic = layer(d["x"], d["topk_weights"], d["topk_ids"], fused_finalize=False).get()
    monkeypatch.setenv("MOEFUSE_DISABLE_FUSED_FINALIZE", "1")
    switched = layer(d["x"], d["topk_weights"], d["topk_ids"], fused_finalize=True).get()
    assert np.array_equal(deterministic.view(np.uint16), switched.view(np.uint16))


@pytest.mark.parametrize("fused", [True, False])
def test_cuda_graph_replay_matches_eager(rng, fused):
    import cupy

    p = moe_problem(rng, "bf16", 64, HIDDEN, INTER, EXPERTS, top_k=2, bias=True)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    eager = layer(d["x"], d["topk_weights"], d["topk_ids"], fused_finalize=fused).get()
    out = poisoned((64, HIDDEN), DTYPES["bf16"])
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        stream.begin_capture()
        layer(d["x"], d["topk_weights"], d["topk_ids"], out=out, fused_finalize=fused)
        graph = stream.end_capture()
        x_next = rng.standard_normal(p.x.shape).astype(p.x.dtype)
        d["x"][...] = cupy.asarray(x_next)  # replays read the captured buffers' new contents
        graph.launch(stream)
    stream.synchronize()
    want = reference.moe(x_next, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]
    assert (
        reference.relative_error(
            eager, reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
        )
        < TOLERANCE["bf16"]
    )


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("limit", [0.5, 2.0])  # x the busiest expert's rows: narrow runs, wide runs
def test_guarded_swapped_geometries_run_exactly_once(rng, backend, fused, limit):
    """Both swapped geometries launch, guarded on the busiest expert's rows: exactly one of them
    runs (a fused output would double, or stay zero, otherwise)."""
    import cupy

    if backend != "sm90-wide":
        pytest.skip("a Hopper swapped-kernel path: runs once, with the wide family")
    p = moe_problem(rng, "bf16", 600, HIDDEN, INTER, EXPERTS, top_k=2, bias=True, skew=0.5)
    busiest = int(np.bincount(p.topk_ids.ravel(), minlength=EXPERTS).max())
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    with moefuse.override(family="wide", busiest_limit=int(limit * busiest)):
        poison_workspace(layer, 600, 2)
        out = poisoned((600, HIDDEN), DTYPES["bf16"])
        layer(d["x"], d["topk_weights"], cupy.asarray(p.topk_ids), out=out, fused_finalize=fused)
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


def test_steady_state_calls_allocate_nothing(rng):
    import cupy

    p = moe_problem(rng, "bf16", 256, HIDDEN, INTER, EXPERTS, top_k=2, bias=False)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    layer.reserve(1024, 2)
    out = cupy.empty((256, HIDDEN), dtype=DTYPES["bf16"])
    layer(d["x"], d["topk_weights"], d["topk_ids"], out=out)
    pool = cupy.get_default_memory_pool()
    before = pool.total_bytes()
    for _ in range(3):
        layer(d["x"], d["topk_weights"], d["topk_ids"], out=out)
    assert pool.total_bytes() == before


def test_one_layer_across_batch_sizes_and_kernel_choices(rng):
    """A layer keeps each call kind's configuration and workspace layout. Batches that grow the
    workspace, come back to an earlier size, or change the Hopper family (and with it the layout)
    stay right, and no layout of a released buffer is kept."""
    p = moe_problem(rng, "bf16", 700, HIDDEN, INTER, EXPERTS, top_k=3, bias=False)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    calls = ((40, "rows"), (700, "rows"), (40, "rows"), (300, "swapped"), (40, "wide"), (300, "rows"))
    for num_tokens, family in calls:
        out = poisoned((num_tokens, HIDDEN), DTYPES["bf16"])
        rows = slice(num_tokens)
        with moefuse.override(family=family):
            layer(d["x"][rows], d["topk_weights"][rows], d["topk_ids"][rows], out=out)
        want = reference.moe(p.x[rows], p.w1, p.w2, p.topk_weights[rows], p.topk_ids[rows])
        assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"], (num_tokens, family)
        generations = {carved.generation for carved in layer._carved.values()}
        assert generations == {layer._workspace.generation}


def test_torch_tensors_pass_straight_in(rng):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch without CUDA")
    p = moe_problem(rng, "bf16", 100, HIDDEN, INTER, EXPERTS, top_k=2, bias=False)

    def tensor(a, dtype):
        return torch.from_numpy(np.asarray(a, dtype=np.float32)).to("cuda", dtype)

    x, w1, w2 = (tensor(v, torch.bfloat16) for v in (p.x, p.w1, p.w2))
    out = moefuse.fused_moe(
        x, w1, w2, tensor(p.topk_weights, torch.float32), torch.from_numpy(p.topk_ids.astype(np.int64)).cuda()
    )
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]
    assert torch.utils.dlpack.from_dlpack(out).data_ptr() == out.data.ptr  # and back, no copy


def test_empty_batch_and_non_contiguous_input(rng):
    import cupy

    p = moe_problem(rng, "bf16", 64, HIDDEN, INTER, EXPERTS, top_k=2, bias=False)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    empty = layer(d["x"][:0], d["topk_weights"][:0], d["topk_ids"][:0])
    assert empty.shape == (0, HIDDEN)
    wide = cupy.zeros((64, 2 * HIDDEN), dtype=d["x"].dtype)
    wide[:, ::2] = d["x"]
    out = layer(wide[:, ::2], d["topk_weights"], d["topk_ids"])
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


def test_gpu_argument_errors_name_the_argument(rng):
    p = moe_problem(rng, "bf16", 8, HIDDEN, INTER, EXPERTS, top_k=2, bias=False)
    d = p.device()
    with pytest.raises(TypeError, match="topk_ids must be int32 or int64"):
        moefuse.fused_moe(d["x"], d["w1"], d["w2"], d["topk_weights"], d["topk_weights"])
    with pytest.raises(ValueError, match=r"k \(topk_ids.shape\[1\]\) must be in"):
        moefuse.plan(d["topk_ids"], 1)
    with pytest.raises(TypeError, match="w1 must have x's dtype float16"):  # x defines the dtype
        moefuse.fused_moe(d["x"].astype(np.float16), d["w1"], d["w2"], d["topk_weights"], d["topk_ids"])
    with pytest.raises(TypeError, match="x must have the weights' dtype"):  # a layer's are fixed
        moefuse.MoELayer(d["w1"], d["w2"])(d["x"].astype(np.float16), d["topk_weights"], d["topk_ids"])


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("tile_m", [64, 128])
def test_tile_edges(rng, fused, tile_m):
    """Experts with 1 row, exactly one 64- and one 128-row tile, one row past each, and none,
    at each M tile (forced in place of the heuristics); for the swapped kernels, exactly one
    16-row MMA width, one row past it, a 32-row box plus one, and one, two and three chunks of
    the narrow tiles' 256 rows (balanced: 257 rows are 129 + 128) and of the wide tiles' 192."""
    import cupy

    counts = {0: 1, 1: 128, 2: 129, 3: 0, 4: 64, 5: 65, 6: 16, 7: 17, 8: 33, 9: 256, 10: 257, 11: 513}
    counts |= {12: 192, 13: 193, 14: 385}
    ids = np.concatenate([np.full(c, e, dtype=np.int32) for e, c in counts.items()])
    ids = rng.permutation(ids)[:, None]
    p = moe_problem(rng, "bf16", ids.shape[0], HIDDEN, INTER, len(counts), top_k=1, bias=True)
    p.topk_ids = ids
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    with moefuse.override(tile_m=tile_m):
        poison_workspace(layer, ids.shape[0], 1)
        out = poisoned((ids.shape[0], HIDDEN), DTYPES["bf16"])
        layer(d["x"], d["topk_weights"], cupy.asarray(ids), out=out, fused_finalize=fused)
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, ids, p.b1, p.b2)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("num_tokens", [1, 3])
def test_decode_shapes_split_k(rng, dtype, num_tokens):
    """Few tokens and a deep GEMM2: the Hopper fused path splits K across CTAs (k >= 3)."""
    p = moe_problem(rng, dtype, num_tokens, 512, 2048, EXPERTS, top_k=4, bias=True)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    for fused in (True, False):
        out = poisoned((num_tokens, 512), DTYPES[dtype])
        layer(d["x"], d["topk_weights"], d["topk_ids"], out=out, fused_finalize=fused)
        assert reference.relative_error(out.get(), want) < TOLERANCE[dtype]


@pytest.mark.parametrize("out_dtype", ["bf16", "float32"])
def test_split_k_with_an_uneven_depth(rng, out_dtype):
    """H=256, I=6464 at T=1, k=3: the row-major GEMM2 has 6 units and 101 K blocks, split 21 ways
    into a float32 output (never into an empty slice), 2 into bf16 (at most 8 rounded adds per
    element)."""
    p = moe_problem(rng, "bf16", 1, 256, 6464, 3, top_k=3, bias=True)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    out = poisoned((1, 256), DTYPES.get(out_dtype, np.float32))
    layer(d["x"], d["topk_weights"], d["topk_ids"], out=out, fused_finalize=True)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


def test_misaligned_input_is_copied_and_misaligned_output_refused(rng):
    import cupy

    p = moe_problem(rng, "bf16", 33, HIDDEN, INTER, EXPERTS, top_k=2, bias=False)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    flat = cupy.empty(33 * HIDDEN + 1, dtype=d["x"].dtype)
    shifted = flat[1:].reshape(33, HIDDEN)  # C-contiguous, 2 bytes off a 16-byte boundary
    shifted[...] = d["x"]
    out = layer(shifted, d["topk_weights"], d["topk_ids"])
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)
    assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]
    with pytest.raises(ValueError, match="out must start at a 16-byte aligned address"):
        layer(d["x"], d["topk_weights"], d["topk_ids"], out=flat[1:].reshape(33, HIDDEN))


def test_large_batch_of_many_chunks_per_expert(rng):
    """12000 tokens on 4 experts (~6000 rows each, one expert skewed hotter): the multi-kernel
    plan, dozens of swapped chunks per expert, many M tiles per expert."""
    p = moe_problem(rng, "bf16", 12000, HIDDEN, INTER, 4, top_k=2, bias=False, skew=0.3)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"])
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids)
    for fused in (True, False):
        out = poisoned((12000, HIDDEN), DTYPES["bf16"])
        layer(d["x"], d["topk_weights"], d["topk_ids"], out=out, fused_finalize=fused)
        assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]


@pytest.mark.parametrize("hidden, inter, experts, top_k", [(8, 8, 1, 1), (16, 24, 3, 2), (72, 40, 5, 5)])
@pytest.mark.parametrize("num_tokens", [1, 5, 300])
def test_tiny_shapes(rng, hidden, inter, experts, top_k, num_tokens):
    """Matrices smaller than one tile in every dimension."""
    p = moe_problem(rng, "bf16", num_tokens, hidden, inter, experts, top_k=top_k, bias=True)
    d = p.device()
    layer = moefuse.MoELayer(d["w1"], d["w2"], d["b1"], d["b2"])
    want = reference.moe(p.x, p.w1, p.w2, p.topk_weights, p.topk_ids, p.b1, p.b2)
    for fused in (True, False):
        out = layer(d["x"], d["topk_weights"], d["topk_ids"], fused_finalize=fused)
        assert reference.relative_error(out.get(), want) < TOLERANCE["bf16"]
