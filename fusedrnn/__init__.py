"""fusedrnn: drop-in torch.nn.LSTM / GRU / LSTMCell / GRUCell backed by fused Triton kernels."""
from fusedrnn import functional, reference
from fusedrnn.backend import BACKENDS
from fusedrnn.convert import convert
from fusedrnn.modules import GRU, LSTM, GRUCell, LSTMCell

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "convert", "functional", "reference",
           "BACKENDS", "__version__"]
