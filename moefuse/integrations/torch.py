"""moefuse as a PyTorch operator: `moefuse::experts` (torch.library), for torch tensors on CUDA.

    from moefuse.integrations.torch import moe_experts
    out = moe_experts(x, topk_ids, topk_weights, w1, w2, activation="swiglu")  # [T, H]

`moe_experts` takes `moefuse.fused_moe`'s weights and options as torch tensors, in transformers'
order (tokens, ids, router weights first), fp8 weights with their scales included (`fp8_scales`
says which scales it takes beyond moefuse's own). The operator has a fake implementation, so
`torch.compile(..., fullgraph=True)` traces through it and `mode="reduce-overhead"` captures it
in a CUDA graph; only tensors and scalars cross it. Inside, the moefuse layer of each set of
weights is found in a cache keyed by the weight tensors: built on first use, rebuilt when a
weight moves or changes in place, dropped when a weight tensor is. The layer reads the weights in
place (DLPack, no copy) and runs on torch's current stream; the output is a tensor torch
allocates, and the workspace is taken from torch's caching allocator on each call: one block then
serves every layer of a model in turn (a workspace per layer would hold the largest batch's
scratch once per layer), and under graph capture the block comes from the graph's private pool,
which torch keeps for the graph's replays. Inference only: there is no backward.
`moefuse.integrations.transformers` runs transformers' MoE models through it.
"""

import weakref
from dataclasses import dataclass

try:
    import torch
except ImportError as error:
    raise ImportError(f"moefuse.integrations.torch needs PyTorch (pip install torch): {error}") from error

from ..activation import Activation, as_activation
from ..fp8 import BLOCK
from ..kernels import cdiv
from ..layer import MoELayer


class UnsupportedExperts(ValueError):
    """Experts whose activation, weight layout or weights moefuse cannot run."""


@dataclass
class _Entry:
    """The layer of one set of weight tensors, for the weights as they were when it was built."""

    layer: MoELayer
    signature: tuple  # the weights' addresses, shapes, strides, dtypes and versions
    workspace_bytes: dict  # (T, k) -> bytes


# (the weight tensors' ids, activation, layout, k) -> _Entry; an entry goes with its tensors
_LAYERS: dict[tuple, _Entry] = {}


def fp8_scales(w1: torch.Tensor, w1_scale: torch.Tensor | None, w2_scale: torch.Tensor | None) -> tuple:
    """`(w1_scale, w2_scale)` in moefuse's formats (`w = q * scale`, float32, per 128 x 128 block
    or per expert matrix) for fp8 weights `w1 [E, 2I, H]` (gate rows, then up rows) whose scales
    torch holds as moefuse takes them, or as transformers' FP8Experts holds them:
    - float8_e8m0fnu scales (powers of two: `scale_fmt="ue8m0"`) are widened to float32, exactly;
    - w1_scale `[E, 2, 1]`, one scale for the gate rows and one for the up rows of each expert
      (FP8Experts without blocks), becomes one per 128 x 128 block, `[E, 2I/128, ceil(H/128)]`,
      and w2's `[E, 1, 1]` (or `[E]`) likewise `[E, ceil(H/128), ceil(I/128)]` (moefuse takes
      both in one format): exact where I % 128 == 0, no block then holding gate and up rows (and
      w2 spans more than one block: moefuse reads `[E, 1, 1]` as one scale per matrix). Otherwise
      gate and up scales equal in every expert give one scale per expert matrix, and others
      raise ValueError.
    Any other scale is returned as it is, for MoELayer's checks. Reads the scales' values (a
    device sync) only where `[E, 2, 1]` cannot become blocks: call it when building a layer."""
    e8m0 = getattr(torch, "float8_e8m0fnu", None)
    s1, s2 = (s.float() if s is not None and s.dtype == e8m0 else s for s in (w1_scale, w2_scale))
    if s1 is None or s2 is None or w1.ndim != 3 or tuple(s1.shape) != (w1.shape[0], 2, 1):
        return s1, s2
    experts, rows, hidden = w1.shape
    inter = rows // 2
    if tuple(s2.shape) not in ((experts,), (experts, 1, 1)):
        raise ValueError(
            f"w1_scale {tuple(s1.shape)} has one scale per gate and up half of w1 {tuple(w1.shape)}: "
            f"w2_scale must then have one per expert matrix ([E] or [E, 1, 1]), got {tuple(s2.shape)}"
        )
    if inter % BLOCK == 0 and max(hidden, inter) > BLOCK:
        s1 = s1.repeat_interleave(inter // BLOCK, dim=1).expand(-1, -1, cdiv(hidden, BLOCK))
        s2 = s2.reshape(experts, 1, 1).expand(-1, cdiv(hidden, BLOCK), cdiv(inter, BLOCK))
        return s1.contiguous(), s2.contiguous()
    if torch.equal(s1[:, 0], s1[:, 1]):
        return s1[:, 0, 0].contiguous(), s2
    raise ValueError(
        f"w1_scale {tuple(s1.shape)} has different scales for the gate and up halves of w1 "
        f"{tuple(w1.shape)}: moefuse takes them as 128 x 128 blocks (w2's scale repeated over its "
        f"blocks), which needs I a multiple of 128 and w2 larger than one block; got H = {hidden}, "
        f"I = {inter}"
    )


def _signature(tensor: torch.Tensor | None):
    if tensor is None:
        return None
    # an inference tensor has no version counter (nor can it change in place outside inference mode)
    version = 0 if tensor.is_inference() else tensor._version
    return tensor.data_ptr(), tuple(tensor.shape), tensor.stride(), tensor.dtype, version


def _layer(
    weights: tuple, activation: Activation, transposed: bool, interleaved: bool, top_k: int, owner: str
) -> _Entry:
    """The cached entry for these weight tensors `(w1, w2, b1, b2, w1_scale, w2_scale)`, (re)built
    when they moved or changed in place: the layer may read copies of them (portable kernels and
    transposed weights, fp8 scales converted by `fp8_scales`)."""
    key = (tuple(map(id, weights)), activation, transposed, interleaved, top_k)
    signature = tuple(map(_signature, weights))
    entry = _LAYERS.get(key)
    if entry is not None and entry.signature == signature:
        return entry
    # detached: DLPack refuses tensors that require grad (a loaded model's parameters), and a
    # capsule of the parameter itself would keep it alive past its finalizer below
    w1, w2, b1, b2, s1, s2 = (None if w is None else w.detach() for w in weights)
    try:
        if s1 is not None or s2 is not None:
            s1, s2 = fp8_scales(w1, s1, s2)
        # transformers marks a slot routed to another rank's expert with the id E_local and weight
        # 0 (EpRouterParallel): num_experts E_local + 1 makes that id one moefuse skips.
        layer = MoELayer(
            w1,
            w2,
            b1,
            b2,
            w1_scale=s1,
            w2_scale=s2,
            activation=activation,
            transposed=transposed,
            interleaved=interleaved,
            num_experts=max(w1.shape[0] + 1, top_k),
        )
    except (TypeError, ValueError) as error:
        raise UnsupportedExperts(f"{owner}: moefuse cannot run these weights: {error}") from error
    if entry is None:  # a new key: forget it when any of its tensors goes
        for tensor in weights:
            if tensor is not None:
                weakref.finalize(tensor, _LAYERS.pop, key, None)
    _LAYERS[key] = entry = _Entry(layer, signature, {})
    return entry


def _unowned(buffer: torch.Tensor):
    """A CuPy view of a torch buffer that does not keep it alive: a layer keeps views of the last
    workspace it was given, which would otherwise hold each layer's last block out of the
    caching allocator."""
    import cupy

    memory = cupy.cuda.UnownedMemory(buffer.data_ptr(), buffer.numel(), None, buffer.device.index)
    return cupy.ndarray((buffer.numel(),), dtype=cupy.uint8, memptr=cupy.cuda.MemoryPointer(memory, 0))


@torch.library.custom_op("moefuse::experts", mutates_args=())
def experts(
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b1: torch.Tensor | None,
    b2: torch.Tensor | None,
    kind: str,
    alpha: float | None,
    limit: float | None,
    transposed: bool,
    interleaved: bool,
    owner: str,
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """MoE experts on moefuse, on torch's current stream: `[T, H]` for `hidden_states [T, H]`
    routed to `top_k_index [T, k]` (ids outside `[0, E)` skipped) with `top_k_weights [T, k]`.
    `owner` names the Experts class in errors; scales go with fp8 weights (`fp8_scales`)."""
    import cupy

    device = hidden_states.device
    if device.type != "cuda":
        raise ValueError(f"{owner}: moefuse runs on NVIDIA GPUs; the hidden states are on {device}")
    out = torch.empty(hidden_states.shape, dtype=hidden_states.dtype, device=device)
    num_tokens, top_k = top_k_index.shape
    if num_tokens == 0:
        return out
    stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream, device.index)
    with cupy.cuda.Device(device.index), stream:
        activation = Activation(kind, limit=limit, alpha=alpha)
        weights = (w1, w2, b1, b2, w1_scale, w2_scale)
        entry = _layer(weights, activation, transposed, interleaved, top_k, owner)
        nbytes = entry.workspace_bytes.get((num_tokens, top_k))
        if nbytes is None:
            nbytes = entry.workspace_bytes[num_tokens, top_k] = entry.layer.workspace_bytes(num_tokens, top_k)
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=device)
        inputs = (t.detach() for t in (hidden_states, top_k_weights, top_k_index))  # as the weights
        entry.layer(*inputs, out=out, workspace=_unowned(workspace))
    return out


@experts.register_fake
def _(hidden_states, *args):
    return hidden_states.new_empty(hidden_states.shape)


def _no_backward(ctx, grad):
    raise NotImplementedError(
        "moefuse's experts are inference-only: run the model under torch.no_grad() or "
        "torch.inference_mode() (generate does)"
    )


experts.register_autograd(_no_backward)


def moe_experts(
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    b1: torch.Tensor | None = None,
    b2: torch.Tensor | None = None,
    *,
    activation: str | Activation = "swiglu",
    transposed: bool = False,
    interleaved: bool = False,
    owner: str = "moe_experts",
    w1_scale: torch.Tensor | None = None,
    w2_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """`moefuse.fused_moe` on torch tensors, through the operator: `[T, H]` for `hidden_states
    [T, H]` routed to `top_k_index [T, k]` (ids outside `[0, E)` skipped) with `top_k_weights`;
    the weights as `moefuse.MoELayer` takes them, fp8 ones (float8_e4m3fn) with `w1_scale` and
    `w2_scale` as it takes them or as `fp8_scales` converts them. `owner` names the caller in
    errors."""
    act = as_activation(activation)
    return torch.ops.moefuse.experts(
        # contiguous here, in torch: moefuse's own copy of a strided input is refused under capture
        hidden_states.contiguous(),
        top_k_index.contiguous(),
        top_k_weights.contiguous(),
        w1,
        w2,
        b1,
        b2,
        act.kind,
        act.alpha,
        act.limit,
        transposed,
        interleaved,
        owner,
        w1_scale,
        w2_scale,
    )


__all__ = ["UnsupportedExperts", "experts", "fp8_scales", "moe_experts"]
