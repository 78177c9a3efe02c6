"""``fusedrnn.convert``: swap every torch recurrent module in a model for its fused drop-in."""
from __future__ import annotations

from torch import nn

from fusedrnn import backend as _backend
from fusedrnn import modules

# exact torch classes -> drop-in; subclasses of torch's (user or fusedrnn) are left alone,
# since their forward may not be torch's
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


def convert(module: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace every ``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, ``nn.LSTMCell``, ``nn.GRUCell``,
    ``nn.RNNCell`` inside ``module``
    (at any depth, in ``ModuleList``/``Sequential``/``ModuleDict``) with the fusedrnn drop-in.

    Parameters, device, dtype and training mode are kept (the same tensors, not copies).
    Modules that are already fusedrnn's are left alone. Returns the converted model; when
    ``module`` itself is an RNN module, the returned object is its replacement.
    """
    _backend.check_backend_name(backend)
    cls = _SWAPS.get(type(module))
    if cls is not None:
        return _fused_twin(module, cls, backend)
    for name, child in list(module.named_children()):
        new_child = convert(child, backend)
        if new_child is not child:
            setattr(module, name, new_child)
    return module
