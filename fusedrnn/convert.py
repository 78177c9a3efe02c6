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


def _parametrized_twin(module: nn.Module, backend: str) -> nn.Module | None:
    """The drop-in of a torch RNN module carrying parametrizations (weight_norm,
    spectral_norm, orthogonal on its weights: torch.nn.utils.parametrize makes its class a
    subclass of torch's, ``Parametrized<Cls>``), parametrized the same way over the same
    ``parametrizations``; None where it is another subclass."""
    bases = type(module).__bases__
    cls = _SWAPS.get(bases[0]) if len(bases) == 1 else None
    if cls is None or not parametrize.is_parametrized(module) or \
            type(module).__name__ != f"Parametrized{bases[0].__name__}":
        return None
    new = _fused_twin(module, cls, backend)
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
    twin = _parametrized_twin(module, backend)
    if twin is not None:
        return twin
    for name, child in list(module.named_children()):
        new_child = convert(child, backend)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
