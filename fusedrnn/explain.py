"""fusedrnn.explain: which kernel each layer pass of a module would run, and why."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fusedrnn import backend as _backend


def explain(module: nn.Module, input, sm_count: int | None = None, *,
            wide_tiles: bool | None = None, smem_limit: int | None = None) -> list[dict]:
    """The plan of every layer and direction of ``module`` (an LSTM/GRU/RNN or a cell,
    fusedrnn's or torch's) for ``input``: a list of dicts with at least ``kernel`` ("stationary",
    "sequence", "step"), ``programs``, ``weights_on_chip`` and ``reason``, plus the grid,
    tiles and warps, the layer, the direction, the backend the call resolves to, and under
    ``backward`` the plan of the backward pass. Weight-stationary plans also say whether
    the forward exchanges h as words that carry their step (``ll``, kernels/ll.py) and
    whether the barriers arrive with a red.release (``red``): both off unless
    FUSEDRNN_KERNEL asks for them.

    ``sm_count`` plans for a GPU with that many SMs (132 for an H100) from any machine;
    by default the input's GPU, or, for CPU input, Triton's interpreter (one program).
    With it, ``wide_tiles`` (whether the GPU builds wgmma: sm_90) and ``smem_limit`` (its
    shared memory a block, in bytes) default to an H100's; an A100 is ``sm_count=108,
    wide_tiles=False, smem_limit=163 * 1024``. Nothing runs: a module whose backend cannot run
    on the input's device (backend="triton", meta tensors say) is planned all the same, its
    ``backend`` None and ``backend_error`` saying why."""
    from fusedrnn.kernels import plan as _plan

    cells = {nn.LSTM: "lstm", nn.LSTMCell: "lstm", nn.GRU: "gru", nn.GRUCell: "gru",
             nn.RNN: "rnn", nn.RNNCell: "rnn"}
    cell = next((c for cls, c in cells.items() if isinstance(module, cls)), None)
    if cell is None:
        raise TypeError(f"explain takes an LSTM, GRU, RNN or one of their cells, got "
                        f"{type(module).__name__}")
    x = input.data if isinstance(input, PackedSequence) else input
    if isinstance(input, PackedSequence):
        B = int(input.batch_sizes[0])
    elif isinstance(module, (nn.LSTMCell, nn.GRUCell, nn.RNNCell)) or x.dim() == 2:
        B = x.shape[0] if x.dim() == 2 else 1
    else:
        B = x.shape[0 if getattr(module, "batch_first", False) else 1]
    H = module.hidden_size
    proj = getattr(module, "proj_size", 0)
    layers = getattr(module, "num_layers", 1)
    dirs = 2 if getattr(module, "bidirectional", False) else 1
    training = torch.is_grad_enabled() and any(p.requires_grad for p in module.parameters())
    if sm_count is None:
        sms = _plan.sm_count(x.device) if x.device.type == "cuda" else 1
    else:
        sms = sm_count
    cuda = sm_count is not None or x.device.type == "cuda"
    # (a given SM count describes an H100/H200 unless told otherwise: the wide tiles as on
    # sm_90, its shared memory)
    rules = _plan.device_rules(x.device) if sm_count is None and x.device.type == "cuda" \
        else {}
    if wide_tiles is not None:
        rules["wide_tiles"] = wide_tiles
    if smem_limit is not None:
        rules["smem_limit"] = smem_limit
    ieee = x.dtype == torch.float32 and not torch.backends.cudnn.allow_tf32
    try:
        chosen, why_not = _backend.resolve(getattr(module, "backend", "native"), x.device,
                                           x.dtype), None
    except RuntimeError as e:  # backend="triton" where it cannot run: the plan still stands
        chosen, why_not = None, str(e)
    rows = []
    for layer in range(layers):
        for d in range(dirs):
            p = _plan.plan(cell, x.dtype, B, H, proj or H, bool(proj), training, sms, cuda, ieee,
                           directions=dirs, **rules)
            bwd = _plan.plan(cell, x.dtype, B, H, proj or H, bool(proj), training, sms, cuda,
                             ieee, backward=True, directions=dirs, **rules)
            rows.append(dict(p, layer=layer, direction="reverse" if d else "forward",
                             backend=chosen, backward=bwd,
                             **({"backend_error": why_not} if why_not else {})))
    return rows
