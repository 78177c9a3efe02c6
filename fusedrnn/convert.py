"""``fusedrnn.convert``: swap every torch recurrent module in a model for its fused drop-in."""
from __future__ import annotations

from torch import nn
from torch.nn.utils import parametrize

from fusedrnn import backend as _backend
from fusedrnn import modules

# exact torch classes -> drop-in; subclasses of torch's (user or fusedrnn) are left alone,
# since their forward may not be torch's, except the class torch.nn.utils.parametrize
# makes of a parametrized module (its forward is torch's)
_SWAPS = {
    nn.LSTM: modules.LSTM,
    nn.GRU: modules.GRU,
    nn.RNN: modules.RNN,
    nn.LSTMCell: modules.LSTMCell,
    nn.GRUCell: modules.GRUCell,
    nn.RNNCell: modules.RNNCell,
}


def _fused_twin(module: nn.Module, cls: type, backend: str) -> nn.Module:
    """A ``cls`` instance sharing ``module``'s state: the very same parameter objects."""
    new = modules.share_state(module, cls)
    new.backend = backend
    return new


def _parametrized_twin(module: nn.Module, swaps: dict, make) -> nn.Module | None:
    """The twin (``make(module, swaps[cls])``) of an RNN module of class ``cls`` carrying
    parametrizations (weight_norm, spectral_norm, orthogonal on its weights:
    torch.nn.utils.parametrize makes its class a subclass of cls, ``Parametrized<Cls>``),
    parametrized the same way over the same ``parametrizations``; None where it is another
    subclass."""
    bases = type(module).__bases__
    cls = swaps.get(bases[0]) if len(bases) == 1 else None
    if cls is None or not parametrize.is_parametrized(module) or \
            type(module).__name__ != f"Parametrized{bases[0].__name__}":
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
    orthogonal) with them. Modules that are already fusedrnn's, and other subclasses of
    torch's (their forward may not be torch's), are left alone. Returns the converted model; when
    ``module`` itself is an RNN module, the returned object is its replacement.
    """
    _backend.check_backend_name(backend)
    cls = _SWAPS.get(type(module))
    if cls is not None:
        return _fused_twin(module, cls, backend)
    twin = _parametrized_twin(module, _SWAPS,
                              lambda m, cls: _fused_twin(m, cls, backend))
    if twin is not None:
        return twin
    for name, child in list(module.named_children()):
        new_child = convert(child, backend)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


_UNSWAPS = {fused: torch_cls for torch_cls, fused in _SWAPS.items()}


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
    cls = _UNSWAPS.get(type(module))
    plain = cls is not None
    if not plain:
        bases = type(module).__bases__
        plain = len(bases) == 1 and bases[0] in _UNSWAPS and parametrize.is_parametrized(module)
    if plain:
        options = _fused_options_set(module)
        if options:
            where = f" at {_path!r}" if _path else ""
            raise ValueError(f"fusedrnn.unconvert: the {type(module).__name__}{where} has "
                             f"{', '.join(options)} set, which torch.nn's module cannot keep; "
                             f"set it to 0 (False) first")
    if cls is not None:
        return modules.torch_twin(module, cls)
    twin = _parametrized_twin(module, _UNSWAPS, modules.torch_twin)
    if twin is not None:
        return twin
    for name, child in list(module.named_children()):
        new_child = unconvert(child, f"{_path}.{name}" if _path else name)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
