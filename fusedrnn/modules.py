"""Drop-in modules: subclasses of torch.nn.LSTM / GRU / RNN / LSTMCell / GRUCell / RNNCell.

Same constructor (plus the keywords ``backend``, and for the LSTM/GRU/RNN ``weight_dropout``
and ``return_cell_states``, off by default), parameters, initialization, ``state_dict`` and
``repr`` as torch's; ``isinstance(m, nn.LSTM)`` holds. ``forward`` handles the input forms
exactly as torch's does (the argument checks below mirror ``torch/nn/modules/rnn.py``) and
hands the math to :mod:`fusedrnn.functional`; ``backend="native"`` is torch's own forward.
The modules know nothing about Triton.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from fusedrnn import backend as _backend
from fusedrnn import episodes, functional, native_ops, regularizers


def share_state(module: nn.Module, cls: type) -> nn.Module:
    """A ``cls`` instance sharing ``module``'s state: the very same parameter objects.

    Containers get their own dict/list so the two do not alias later edits; the tensors
    inside are shared (no copy: optimizer state and tied weights stay valid)."""
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for key, value in state.items():
        if isinstance(value, dict):
            state[key] = type(value)(value)
        elif isinstance(value, list):
            state[key] = list(value)
    new.__dict__.update(state)
    return new


# attributes of fusedrnn's modules that torch's do not have: the backend, and options
# torch's modules cannot serve
FUSED_OPTIONS = ("weight_dropout", "variational_dropout", "zoneout", "return_cell_states")
FUSED_ATTRIBUTES = ("backend",) + FUSED_OPTIONS


def torch_twin(module: nn.Module, cls: type | None = None) -> nn.Module:
    """The torch.nn module a drop-in subclasses (or ``cls``; for a user's subclass made a
    drop-in by convert, that subclass), sharing its state: the very same parameter objects,
    without fusedrnn's own attributes."""
    if cls is None:
        cls = getattr(type(module), "_fusedrnn_subclass", None) or next(
            c for c in type(module).__mro__ if c.__module__ == "torch.nn.modules.rnn")
    twin = share_state(module, cls)
    for name in FUSED_ATTRIBUTES:
        twin.__dict__.pop(name, None)
    return twin


def _fx_leaf(module: nn.Module, input, hx, resets=None):
    """Under torch.fx symbolic tracing, a call_module node for ``module`` (None otherwise).

    fx keeps torch.nn's own modules as leaves (Tracer.is_leaf_module goes by the class's
    module path), so a traced model holding nn.LSTM records one call; fusedrnn's classes
    live elsewhere, so fx would trace into their forward, whose Python control flow it
    cannot follow. Recording the call ourselves keeps them leaves, as torch's are.

    Not for a user's subclass made a drop-in (fusedrnn.convert) that defines its own
    forward: a call_module node would run that forward again around this one (twice its
    work, silently); fx traces into it, and fails on its control flow, as on the unconverted
    subclass."""
    proxy = next((a for a in (input, hx, resets) if isinstance(a, torch.fx.Proxy)), None)
    if proxy is None or proxy.tracer.root is module:
        return None
    drop_in = getattr(type(module), "_fusedrnn_drop_in", None)
    if drop_in is not None and type(module).forward is not drop_in.forward:
        return None
    tracer = proxy.tracer
    args = (input,) if hx is None else (input, hx)
    kwargs = {} if resets is None else {"resets": resets}
    return tracer.create_proxy("call_module", tracer.path_of_module(module), args, kwargs)


class _BackendMixin:
    """The ``backend`` attribute: "auto" | "triton" | "reference" | "native"."""

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles in place of this module: the torch.nn module it
        subclasses, sharing the same Parameter objects. A scripted model is then a torch
        model, saved and loaded without fusedrnn, running torch's ops (cuDNN, oneDNN).

        torch.jit.script calls this for every submodule and puts the result into the parent
        module it was given, so after scripting a model the eager model holds the torch.nn
        modules too (same parameters, same numbers; ``fusedrnn.convert`` swaps them back)."""
        return torch_twin(self)

    def _set_backend(self, backend: str) -> None:
        self.backend = _backend.check_backend_name(backend)

    def _resolve_backend(self, input, resets=None) -> str:
        x = input.data if isinstance(input, PackedSequence) else input
        if not isinstance(x, Tensor):
            return "native"  # let torch's forward raise its own error for non-tensor input
        stack = isinstance(self, nn.RNNBase)
        chosen = _backend.resolve(getattr(self, "backend", "auto"), x.device, x.dtype,
                                  autocast_lstm=isinstance(self, nn.LSTM), stack=stack)
        option = "resets" if resets is not None else self._fused_only_option()
        if (chosen == "native" and stack and _backend.compiled_native()
                and _backend.chose_by_auto(getattr(self, "backend", "auto"))
                and not native_ops.serves(self.dropout, self.training, self.num_layers,
                                          x.device)):
            return "reference"  # (torch.compile: cuDNN's inter-layer dropout, see native_ops)
        if chosen == "native" and option:
            if getattr(self, "backend", "auto") == "native" or _backend.exporting():
                raise ValueError(f"fusedrnn: {option} is set, and torch's own op "
                                 f"(backend='native', and under tracing or export) cannot "
                                 f"serve it; use backend='auto', 'reference' or 'triton'"
                                 + (", or call .eval()" if option in
                                    ("weight_dropout", "variational_dropout") else ""))
            return "reference"  # "auto" off CUDA
        if (chosen == "native" and _backend.chose_by_auto(getattr(self, "backend", "auto"))
                and x.device.type == "cuda" and not self.training and _backend.transformed()):
            return "reference"  # (cuDNN refuses a backward in eval mode; torch.func's need one)
        if (chosen == "triton" and _backend.chose_by_auto(getattr(self, "backend", "auto"))
                and isinstance(self, (nn.LSTM, nn.GRU, nn.RNN)) and not option
                and not self._triton_by_table(input)):
            return "native"  # (cuDNN cannot serve those options: the kernels stay)
        return chosen

    def _fused_only_option(self) -> str | None:
        """The name of a fusedrnn-only option this call must serve (torch's op cannot), or
        None: return_cell_states, zoneout (eval too: its expectation), or weight_dropout and
        variational_dropout in training."""
        if getattr(self, "return_cell_states", False):
            return "return_cell_states"
        if any(getattr(self, "zoneout", (0.0, 0.0))):
            return "zoneout"
        if self.training and getattr(self, "weight_dropout", 0.0) > 0:
            return "weight_dropout"
        if self.training and any(getattr(self, "variational_dropout", (0.0,) * 3)):
            return "variational_dropout"
        return None

    def _triton_by_table(self, input) -> bool:
        """``auto`` on CUDA: the fused kernels only where the table (kernels/auto_table.py,
        measured rows or the plan's estimates) says they are not slower than cuDNN, and
        wherever cuDNN cannot serve: under torch.compile, and a backward in eval mode."""
        from fusedrnn.kernels import auto_table, plan
        from fusedrnn.kernels.common import sm_count

        grad = torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters())
        if torch.compiler.is_compiling() or (grad and not self.training):
            return True
        x = input.data if isinstance(input, PackedSequence) else input
        if isinstance(input, PackedSequence):
            B = int(input.batch_sizes[0])  # batch_sizes lives on the CPU: no sync
        else:
            B = x.shape[0 if self.batch_first else 1] if x.dim() == 3 else 1
        grad = grad or (torch.is_grad_enabled() and x.requires_grad)
        return auto_table.prefers_triton(
            self.mode.lower().split("_")[0], x.dtype, B, self.hidden_size, self.input_size,
            getattr(self, "proj_size", 0), self.num_layers, self.bidirectional, grad,
            sm_count(x.device), **plan.device_rules(x.device))[0]


def _autocast_dtype(module, device_type: str):
    """The dtype torch's own module computes in under autocast here, or None.

    Mirrors torch: on CUDA the cell ops run in the autocast dtype, and the full LSTM/GRU/RNN
    in float16 whatever that dtype is (torch's autocast wrapper of the cuDNN RNN,
    aten/src/ATen/cudnn/AutocastRNN.cpp, casts to kHalf: under bf16 autocast nn.LSTM gives
    float16; found on an H200); on the CPU the full LSTM runs in the autocast dtype
    (autocast casts it), and so do the plain RNN and RNNCell (torch's CPU code runs them as
    autocast linears, so their state and outputs come out in the autocast dtype), while
    GRU, GRUCell and LSTMCell stay in float32."""
    if not torch.is_autocast_enabled(device_type):
        return None
    if device_type == "cuda":
        full = isinstance(module, (nn.LSTM, nn.GRU, nn.RNN))
        return torch.float16 if full else torch.get_autocast_dtype(device_type)
    if device_type == "cpu" and isinstance(module, (nn.LSTM, nn.RNN, nn.RNNCell)):
        return torch.get_autocast_dtype(device_type)
    return None


def _autocast_cast(module, x: Tensor, states, weights):
    """(x, states, weights, context) as torch's module runs them under autocast: cast to the
    autocast dtype with autocast then off (as inside torch's cast RNN ops), or with autocast
    left as it is where torch's ops are uncast (they decompose into autocast matmuls)."""
    dt = _autocast_dtype(module, x.device.type)
    if dt is None:
        if torch.is_autocast_enabled(x.device.type):
            x, states, weights = _align_uncast(x, states, weights, x.device.type)
        return x, states, weights, contextlib.nullcontext()
    # as torch's autocast casts: float64 is not eligible and stays float64
    cast = lambda t: t if t is None or t.dtype == torch.float64 else t.to(dt)  # noqa: E731
    return (cast(x), [cast(s) for s in states], [cast(w) for w in weights],
            torch.autocast(x.device.type, enabled=False))


def _align_uncast(x: Tensor, states, weights, device_type: str):
    """Under autocast, torch's uncast modules (the GRU, GRUCell and LSTMCell on the CPU) take
    any mix of float32 and the autocast dtype in input, state and weights: their matmuls
    cast every operand to the autocast dtype, and the state, updated in place of hx, comes
    out in hx's dtype. Ours take one dtype: hx's. Casting the others to it changes no
    number torch computes (an autocast matmul casts them back, exactly); float64 and other
    dtypes stay as they are, for the checks to name."""
    mixable = (torch.float32, torch.get_autocast_dtype(device_type))
    dt = states[0].dtype
    if dt not in mixable:
        return x, states, weights
    cast = lambda t: t if t is None or t.dtype not in mixable else t.to(dt)  # noqa: E731
    return cast(x), [cast(s) for s in states], [cast(w) for w in weights]


def _zeros_state(module, batch: int, size: int, like: Tensor) -> Tensor:
    D = 2 if module.bidirectional else 1
    return torch.zeros(module.num_layers * D, batch, size, dtype=like.dtype, device=like.device)


def _rnn_forward(module, input, hx, backend: str, resets=None):
    """torch's LSTM/GRU/RNN forward with ``_VF.lstm``/``gru``/``rnn_tanh``/``rnn_relu``
    replaced by fusedrnn's (and ``resets``, fusedrnn/episodes.py)."""
    module._update_flat_weights()
    lstm_mode = module.mode == "LSTM"
    name = module.mode if module.mode in ("LSTM", "GRU") else "RNN"
    real_hidden = module.proj_size if module.proj_size > 0 else module.hidden_size
    sorted_indices = unsorted_indices = batch_sizes = None
    is_batched, batch_dim = True, 0 if module.batch_first else 1

    if isinstance(input, PackedSequence):
        input, batch_sizes, sorted_indices, unsorted_indices = input
        max_batch = int(batch_sizes[0])
        if hx is None:
            hx = _zeros_state(module, max_batch, real_hidden, input)
            if lstm_mode:
                hx = (hx, _zeros_state(module, max_batch, module.hidden_size, input))
    else:
        if input.dim() not in (2, 3):
            kind = " tensor" if name == "RNN" else ""  # torch's words, module by module
            raise ValueError(f"{name}: Expected input to be 2D or 3D, got {input.dim()}D{kind} "
                             f"instead")
        is_batched = input.dim() == 3
        if not is_batched:
            if resets is not None:
                episodes.check_resets(resets, input.shape[0], 1, input.device, unbatched=True)
                resets = resets.unsqueeze(batch_dim)
            input = input.unsqueeze(batch_dim)
        max_batch = input.size(batch_dim)
        if hx is None:
            hx = _zeros_state(module, max_batch, real_hidden, input)
            if lstm_mode:
                hx = (hx, _zeros_state(module, max_batch, module.hidden_size, input))
        elif lstm_mode:
            want = 3 if is_batched else 2
            if hx[0].dim() != want or hx[1].dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx and cx should also be {want}-D but got "
                                   f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        else:
            want = 3 if is_batched else 2
            if hx.dim() != want:
                kind = "batched 3-D" if is_batched else "unbatched 2-D"
                raise RuntimeError(f"For {kind} input, hx should also be {want}-D but got "
                                   f"{hx.dim()}-D tensor")
            if not is_batched:
                hx = hx.unsqueeze(1)
    # torch leaves a user-given hx for packed input to the C++ op's checks; ours are clearer
    module.check_forward_args(input, hx, batch_sizes)
    hx = module.permute_hidden(hx, sorted_indices)

    op = functional.lstm if lstm_mode else functional.gru
    if name == "RNN":
        nonlinearity = "tanh" if module.mode == "RNN_TANH" else "relu"
        op = functools.partial(functional.rnn, nonlinearity=nonlinearity)
    states = list(hx) if lstm_mode else [hx]
    weights = module._flat_weights
    if module.training and getattr(module, "weight_dropout", 0.0) > 0:
        weights = regularizers.drop_connect(weights, module._flat_weights_names,
                                            module.weight_dropout, regularizers.draw_seed())
    input, states, weights, ctx = _autocast_cast(module, input, states, weights)
    cells = getattr(module, "return_cell_states", False)
    if cells:
        op = functools.partial(op, cell_states=True)
    if resets is not None:
        op = functools.partial(op, resets=resets)
    recurrent = _recurrent(module)
    if recurrent is not None:
        op = functools.partial(op, recurrent=recurrent)
    with ctx:
        result = op(input, batch_sizes, tuple(states) if lstm_mode else states[0], weights,
                    module.bias, module.num_layers, float(module.dropout), module.training,
                    module.bidirectional, module.batch_first, backend=backend)
    output, hidden = result[0], (tuple(result[1:3]) if lstm_mode else result[1])
    extra = (result[3],) if cells else ()

    if batch_sizes is not None:
        extra = tuple(PackedSequence(e, batch_sizes, sorted_indices, unsorted_indices)
                      for e in extra)
        return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                module.permute_hidden(hidden, unsorted_indices), *extra)
    if not is_batched:
        output = output.squeeze(batch_dim)
        hidden = (hidden[0].squeeze(1), hidden[1].squeeze(1)) if lstm_mode else hidden.squeeze(1)
        extra = tuple(e.squeeze(batch_dim) for e in extra)
    return (output, hidden, *extra)


def _recurrent(module):
    """The variational dropout and zoneout of this forward pass, or None where both are
    off (and in eval, where only zoneout's expectation remains)."""
    variational = getattr(module, "variational_dropout", (0.0,) * 3)
    zoneout = getattr(module, "zoneout", (0.0, 0.0))
    if not any(zoneout) and not (module.training and any(variational)):
        return None
    # eval draws nothing (zoneout's expectation): torch's generator is left as it was
    seed = regularizers.draw_seed() if module.training else 0
    return regularizers.Recurrent(seed, module.training, variational, zoneout)


class _SequenceModule(_BackendMixin):
    """What fusedrnn's LSTM, GRU and RNN add to torch's: ``backend`` and the recurrent
    regularizers (fusedrnn/regularizers.py), all keyword-only and off by default."""
    DOC = """
    fusedrnn: takes the keywords ``backend`` ("auto" | "triton" | "reference" | "native"),
    ``weight_dropout`` (DropConnect on W_hh in training, one mask per forward pass;
    default 0: off, torch's module exactly), ``variational_dropout`` (a rate, or rates
    (input, between layers, recurrent state): one mask per sequence and layer, the same at
    every step, in training; the recurrent one multiplies h_{t-1} inside the kernels),
    ``zoneout`` (LSTM and GRU: a rate, or for the LSTM rates (h, c): per step and unit the
    previous value is kept in training, the expectation in eval; not with proj_size) and,
    for the LSTM, ``return_cell_states`` (default False; True: forward returns (output, (h_n, c_n),
    cell_states), every c_t of the last layer in the output's layout, zero past a
    sequence's length)."""

    def __init__(self, *args, backend: str = "auto", weight_dropout: float = 0.0,
                 return_cell_states: bool = False, variational_dropout=0.0, zoneout=0.0,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)
        self.weight_dropout = regularizers.check_rate("weight_dropout", weight_dropout)
        if return_cell_states and self.mode != "LSTM":
            raise ValueError(f"return_cell_states: only an LSTM has cell states, not "
                             f"{type(self).__name__}")
        self.return_cell_states = bool(return_cell_states)
        self.variational_dropout = regularizers.check_rates("variational_dropout",
                                                            variational_dropout, 3)
        self.zoneout = regularizers.check_rates("zoneout", zoneout, 2)
        if any(self.zoneout) and self.mode not in ("LSTM", "GRU"):
            raise ValueError(f"zoneout: fusedrnn runs it on the LSTM and the GRU, not "
                             f"{type(self).__name__}")
        if self.mode == "GRU" and self.zoneout[1] != self.zoneout[0]:
            raise ValueError(f"zoneout: a GRU has no cell state; give one rate (for h), got "
                             f"{zoneout!r}")
        if any(self.zoneout) and getattr(self, "proj_size", 0) > 0:
            raise ValueError("zoneout: not with proj_size > 0 (the kernels blend the "
                             "unprojected state)")

    def forward(self, input, hx=None, *, resets=None):
        """torch's forward; ``resets`` (fusedrnn, keyword-only): a bool tensor shaped like
        the input without its features ((T, B), (B, T) with batch_first, (T,) unbatched, or
        aligned with a PackedSequence's data); where set, the state entering that step is hx
        (or zeros) again, in every layer, and no gradient crosses it. The reverse direction
        restarts at each episode's last step. fusedrnn/episodes.py has the exact rule."""
        leaf = _fx_leaf(self, input, hx, resets)
        if leaf is not None:
            return leaf
        backend = self._resolve_backend(input, resets)
        if torch.compiler.is_compiling() and self._runs_outside_the_graph(backend):
            return _forward_outside_the_graph(self, input, hx, resets)
        if backend == "native" and not _backend.compiled_native():
            return super().forward(input, hx)
        # (under torch.compile torch's op runs inside a custom op: fusedrnn.functional)
        return _rnn_forward(self, input, hx, backend, resets)

    def _runs_outside_the_graph(self, backend: str) -> bool:
        """Under torch.compile, whether this forward leaves the graph (a graph break): the
        regularizers that draw their seeds in Python (weight_dropout and variational_dropout
        in training, zoneout), which Dynamo cannot trace (an opaque torch.Generator; zoneout's
        Philox on Python ints compiled for over 5 minutes at T=1), and what the kernels' custom
        ops do not take (return_cell_states on triton)."""
        return bool((self.training and (getattr(self, "weight_dropout", 0.0) > 0
                                        or any(getattr(self, "variational_dropout", (0.0,)))))
                    or any(getattr(self, "zoneout", (0.0,)))
                    or (backend == "triton" and getattr(self, "return_cell_states", False)))

    def extra_repr(self) -> str:
        s = super().extra_repr()
        p = getattr(self, "weight_dropout", 0.0)
        s += f", weight_dropout={p}" if p else ""
        for name, off in (("variational_dropout", (0.0,) * 3), ("zoneout", (0.0, 0.0))):
            v = getattr(self, name, off)
            if any(v):
                s += f", {name}={v[0] if len(set(v)) == 1 else v}"
        return s + (", return_cell_states=True" if getattr(self, "return_cell_states", False)
                    else "")


def _forward_outside_the_graph(module, input, hx, resets):
    """The module's forward run eagerly under torch.compile (see
    _SequenceModule._runs_outside_the_graph): a graph break, so that torch.compile without
    fullgraph=True runs the model (fullgraph=True names this function in its error)."""
    return _SequenceModule.forward(module, input, hx, resets=resets)  # (not a subclass's)


_OUTSIDE_REASON = ("fusedrnn: weight_dropout and variational_dropout in training, zoneout, "
                   "and return_cell_states on triton run outside the compiled "
                   "graph (compile without fullgraph=True, or without those options)")
try:
    _forward_outside_the_graph = torch.compiler.disable(_forward_outside_the_graph,
                                                        reason=_OUTSIDE_REASON)
except TypeError:  # (a torch without the reason keyword)
    _forward_outside_the_graph = torch.compiler.disable(_forward_outside_the_graph)


class LSTM(_SequenceModule, nn.LSTM):
    __doc__ = (nn.LSTM.__doc__ or "") + _SequenceModule.DOC


class RNN(_SequenceModule, nn.RNN):
    __doc__ = (nn.RNN.__doc__ or "") + _SequenceModule.DOC


class GRU(_SequenceModule, nn.GRU):
    __doc__ = (nn.GRU.__doc__ or "") + _SequenceModule.DOC


# ----------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------
def _check_cell_args(module, x: Tensor, states, weight_ih: Tensor) -> None:
    """The checks ``_VF.lstm_cell`` / ``_VF.gru_cell`` make, with the same messages."""
    if x.size(1) != module.input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {x.size(1)} expected "
                           f"{module.input_size}")
    if x.dtype != weight_ih.dtype:
        raise RuntimeError(f"input dtype ({x.dtype}) does not match weight dtype "
                           f"({weight_ih.dtype})")
    for k, s in enumerate(states):
        if s.dim() != 2:
            raise RuntimeError(f"hidden{k} must be 2-D (batch, hidden_size) for 2-D input, got "
                               f"{s.dim()}-D")
        if s.size(0) != x.size(0):
            raise RuntimeError(f"Input batch size {x.size(0)} doesn't match hidden{k} batch size "
                               f"{s.size(0)}")
        if s.size(1) != module.hidden_size:
            raise RuntimeError(f"hidden{k} has inconsistent hidden_size: got {s.size(1)}, "
                               f"expected {module.hidden_size}")
        if s.dtype != x.dtype:
            raise RuntimeError(f"hidden{k} dtype ({s.dtype}) does not match input dtype "
                               f"({x.dtype})")
        if s.device != x.device:
            raise RuntimeError(f"Input and hidden tensors are not at the same device, found "
                               f"input tensor at {x.device} and hidden{k} tensor at {s.device}")


def _one_state_cell(module, name: str, input: Tensor, hx: Tensor | None, step) -> Tensor:
    """GRUCell/RNNCell forward (torch's input forms and checks) around
    ``step(input, hx, w_ih, w_hh, b_ih, b_hh)``."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
    if hx is None:
        hx = input.new_zeros(input.size(0), module.hidden_size)
    elif not is_batched:
        hx = hx.unsqueeze(0)
    input, (hx,), weights, ctx = _autocast_cast(module, input, [hx], [
        module.weight_ih, module.weight_hh, module.bias_ih, module.bias_hh])
    _check_cell_args(module, input, (hx,), weights[0])
    with ctx:
        h = step(input, hx, *weights)
    return h if is_batched else h.squeeze(0)


class _CellModule(_BackendMixin):
    """What fusedrnn's cells add to torch's: the keyword ``backend``."""
    DOC = """
    fusedrnn: takes the keyword ``backend`` ("auto" | "triton" | "reference" | "native")."""

    def __init__(self, *args, backend: str = "auto", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)


def _cell_init(torch_cls: type):
    """A cell's constructor whose signature (inspect.signature of the class) is torch's
    class's plus the keyword-only ``backend``: torch.nn.utils.skip_init, for one, asks it for
    a ``device`` argument."""
    def __init__(self, *args, backend: str = "auto", **kwargs):
        _CellModule.__init__(self, *args, backend=backend, **kwargs)
    sig = inspect.signature(torch_cls.__init__)
    backend = inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="auto",
                                annotation=str)
    __init__.__signature__ = sig.replace(parameters=[*sig.parameters.values(), backend])
    return __init__


class LSTMCell(_CellModule, nn.LSTMCell):
    __doc__ = (nn.LSTMCell.__doc__ or "") + _CellModule.DOC
    __init__ = _cell_init(nn.LSTMCell)

    def forward(self, input: Tensor, hx: tuple[Tensor, Tensor] | None = None):
        leaf = _fx_leaf(self, input, hx)
        if leaf is not None:
            return leaf
        backend = self._resolve_backend(input)
        if backend == "native":
            return super().forward(input, hx)
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for idx, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{idx}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
            # torch's op checks these after the loop above; ours would index past them
            if isinstance(hx, Tensor):
                raise TypeError("LSTMCell: hx must be a tuple of two Tensors (h_0, c_0), not "
                                f"a Tensor of shape {tuple(hx.shape)}")
            if len(hx) != 2:
                raise RuntimeError(f"LSTMCell: hx must hold two hidden states (h_0, c_0), got "
                                   f"{len(hx)}")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = input.new_zeros(input.size(0), self.hidden_size)
            hx = (zeros, zeros)
        elif not is_batched:
            hx = (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        input, hx, weights, ctx = _autocast_cast(self, input, list(hx), [
            self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh])
        _check_cell_args(self, input, hx, weights[0])
        with ctx:
            h, c = functional.lstm_cell(input, hx[0], hx[1], *weights, backend=backend)
        return (h, c) if is_batched else (h.squeeze(0), c.squeeze(0))


class GRUCell(_CellModule, nn.GRUCell):
    __doc__ = (nn.GRUCell.__doc__ or "") + _CellModule.DOC
    __init__ = _cell_init(nn.GRUCell)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        leaf = _fx_leaf(self, input, hx)
        if leaf is not None:
            return leaf
        backend = self._resolve_backend(input)
        if backend == "native":
            return super().forward(input, hx)
        return _one_state_cell(self, "GRUCell", input, hx, functools.partial(
            functional.gru_cell, backend=backend))


class RNNCell(_CellModule, nn.RNNCell):
    __doc__ = (nn.RNNCell.__doc__ or "") + _CellModule.DOC
    __init__ = _cell_init(nn.RNNCell)

    def forward(self, input: Tensor, hx: Tensor | None = None) -> Tensor:
        leaf = _fx_leaf(self, input, hx)
        if leaf is not None:
            return leaf
        backend = self._resolve_backend(input)
        if backend == "native" or self.nonlinearity not in ("tanh", "relu"):
            return super().forward(input, hx)  # (torch raises for an unknown nonlinearity)
        return _one_state_cell(self, "RNNCell", input, hx, functools.partial(
            functional.rnn_cell, nonlinearity=self.nonlinearity, backend=backend))
