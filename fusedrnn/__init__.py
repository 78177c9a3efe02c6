"""fusedrnn: drop-in torch.nn.LSTM / GRU / LSTMCell / GRUCell backed by fused Triton kernels."""
from fusedrnn import functional, reference
from fusedrnn.backend import BACKENDS
from fusedrnn.compile import allow_compile
from fusedrnn.convert import convert
from fusedrnn.modules import GRU, LSTM, GRUCell, LSTMCell

__version__ = "0.1.0"
__all__ = ["LSTM", "GRU", "LSTMCell", "GRUCell", "convert", "functional", "reference",
           "BACKENDS", "allow_compile", "__version__"]
