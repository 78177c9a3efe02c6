"""``fusedrnn.convert``: swap every torch recurrent module in a model for its fused drop-in."""
from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from fusedrnn import backend as _backend
from fusedrnn import modules

# exact torch classes -> drop-in
_SWAPS = {
    nn.LSTM: modules.LSTM,
    nn.GRU: modules.GRU,
    nn.RNN: modules.RNN,
    nn.LSTMCell: modules.LSTMCell,
    nn.GRUCell: modules.GRUCell,
    nn.RNNCell: modules.RNNCell,
}


def _drop_in_class(cls: type) -> type | None:
    """The class convert gives an instance of ``cls``: the drop-in of torch's exact class;
    for a user's subclass of one (pytorch-forecasting's LSTM and GRU, which wrap torch's
    forward to take zero lengths, and what a subclass adds by ``super().forward``) the twin
    class ``(cls, drop-in)`` (subclass_twin_class); None for every other class, fusedrnn's
    own included. (A parametrized module's class is torch.nn.utils.parametrize's, over the
    class asked here: _parametrized_twin.)"""
    if cls in _SWAPS:
        return _SWAPS[cls]
    if issubclass(cls, modules._BackendMixin):
        return None
    torch_cls = next((c for c in cls.__mro__ if c in _SWAPS), None)
    if torch_cls is None:
        return None
    try:
        return subclass_twin_class(cls, _SWAPS[torch_cls])
    except Exception:  # (a layout or metaclass conflict, an __init_subclass__ that refuses:
        return None     # the subclass stays as it is, torch's forward under it)


_TWINS: dict = {}


def subclass_twin_class(sub: type, fused: type) -> type:
    """The class ``(sub, fused)``, one per pair: a user's subclass ``sub`` of a torch RNN
    class over fusedrnn's drop-in ``fused`` of that class. Its MRO puts the drop-in between
    the subclass and torch's class, so whatever the subclass defines wins, and its
    ``super().forward`` (or the forward it inherits) is fusedrnn's. Its name is the
    subclass's (repr unchanged, as the drop-ins keep torch's); it pickles and deep-copies
    by (sub, fused) (__reduce_ex__), since a class made here cannot be found by name;
    ``torch.jit.script`` and ``unconvert`` give the subclass back (its
    ``_fusedrnn_subclass``)."""
    twin = _TWINS.get((sub, fused))
    if twin is None:
        twin = type(sub)(sub.__name__, (sub, fused), {
            "__module__": sub.__module__, "__qualname__": sub.__qualname__,
            "__doc__": sub.__doc__, "_fusedrnn_subclass": sub, "_fusedrnn_drop_in": fused,
            "__reduce_ex__": _reduce_subclass_twin})
        _TWINS[(sub, fused)] = twin
    return twin


def _reduce_subclass_twin(self, protocol):
    cls = type(self)
    state = self.__getstate__() if hasattr(self, "__getstate__") else self.__dict__.copy()
    return _new_subclass_twin, (cls._fusedrnn_subclass, cls._fusedrnn_drop_in), state


def _new_subclass_twin(sub: type, fused: type) -> nn.Module:
    """An empty instance of subclass_twin_class(sub, fused) (pickle restores its state)."""
    cls = subclass_twin_class(sub, fused)
    return cls.__new__(cls)


def _fused_twin(module: nn.Module, cls: type, backend: str) -> nn.Module:
    """A ``cls`` instance sharing ``module``'s state: the very same parameter objects."""
    new = modules.share_state(module, cls)
    new.backend = backend
    return new


def _parametrized_twin(module: nn.Module, lookup, make) -> nn.Module | None:
    """The twin (``make(module, lookup(cls))``) of an RNN module of class ``cls`` carrying
    parametrizations (weight_norm, spectral_norm, orthogonal on its weights:
    torch.nn.utils.parametrize makes its class a subclass of cls, ``Parametrized<Cls>``),
    parametrized the same way over the same ``parametrizations``; None where ``lookup``
    has no class for cls."""
    bases = type(module).__bases__
    cls = lookup(bases[0]) if len(bases) == 1 else None
    if cls is None or type(module).__name__ != f"Parametrized{bases[0].__name__}":
        return None
    new = make(module, cls)
    parametrize._inject_new_class(new)
    for name in new.parametrizations:
        parametrize._inject_property(new, name)
    return new


def convert(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.LSTMCell``, ``nn.GRUCell``,
    ``nn.RNNCell`` inside ``module``
    (at any depth, in ``ModuleList``/``Sequential``/``ModuleDict``) with the fusedrnn drop-in.

    Parameters, device, dtype and training mode are kept (the same tensors, not copies), and
    parametrizations (``torch.nn.utils.parametrize``: weight_norm, spectral_norm,
    orthogonal) with them. A user's subclass of one of those classes becomes an instance of
    ``(subclass, drop-in)`` (subclass_twin_class): what the subclass defines stays, and
    torch's forward under it is fusedrnn's. Modules that are already fusedrnn's are left
    alone. Returns the converted model; when ``module`` itself is an RNN module, the
    returned object is its replacement.
    """
    _backend.check_backend_name(backend)
    if parametrize.is_parametrized(module):
        twin = _parametrized_twin(module, _drop_in_class,
                                  lambda m, cls: _fused_twin(m, cls, backend))
    else:
        cls = _drop_in_class(type(module))
        twin = _fused_twin(module, cls, backend) if cls is not None else None
    if twin is not None:
        return twin
    for name, child in list(module.named_children()):
        new_child = convert(child, backend)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


_UNSWAPS = {fused: torch_cls for torch_cls, fused in _SWAPS.items()}


def _torch_class(cls: type) -> type | None:
    """The class unconvert gives an instance of ``cls``: torch's for a drop-in, the user's
    subclass for a subclass twin; None for every other class."""
    return _UNSWAPS.get(cls) or cls.__dict__.get("_fusedrnn_subclass")


def _fused_options_set(module: nn.Module) -> list[str]:
    """fusedrnn's own options set on a drop-in (torch's class cannot keep them)."""
    def is_set(value):
        return any(value) if isinstance(value, (tuple, list)) else bool(value)
    return [name for name in modules.FUSED_OPTIONS if is_set(getattr(module, name, 0))]


def unconvert(module: nn.Module, _path: str = "") -> nn.Module:
    """The inverse of :func:`convert`: replace every fusedrnn drop-in inside ``module`` with
    the ``torch.nn`` module it subclasses, sharing the same parameter objects (and
    parametrizations), device, dtype and training mode.

    For tools that match torch's classes exactly, such as
    ``torch.ao.quantization.quantize_dynamic``, which leaves a drop-in unquantized, and for
    saving a model that loads where fusedrnn is not installed. Raises ``ValueError`` where a
    drop-in has one of fusedrnn's own options set (``weight_dropout``,
    ``variational_dropout``, ``zoneout``, ``return_cell_states``), which torch's module
    would silently drop. Returns the model; when ``module`` itself is a drop-in, the
    returned object is its replacement."""
    if parametrize.is_parametrized(module):
        bases = type(module).__bases__
        plain = len(bases) == 1 and _torch_class(bases[0]) is not None
    else:
        cls = _torch_class(type(module))
        plain = cls is not None
    if plain:
        options = _fused_options_set(module)
        if options:
            where = f" at {_path!r}" if _path else ""
            raise ValueError(f"fusedrnn.unconvert: the {type(module).__name__}{where} has "
                             f"{', '.join(options)} set, which torch.nn's module cannot keep; "
                             f"set it to 0 (False) first")
        if parametrize.is_parametrized(module):
            return _parametrized_twin(module, _torch_class, modules.torch_twin)
        return modules.torch_twin(module, cls)
    for name, child in list(module.named_children()):
        new_child = unconvert(child, f"{_path}.{name}" if _path else name)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
