"""fusedrnn: drop-in torch.nn.LSTM / GRU / RNN and their cells, backed by fused Triton kernels."""
from fusedrnn import functional, reference
from fusedrnn.backend import BACKENDS
from fusedrnn.compile import allow_compile
from fusedrnn.convert import convert, unconvert
from fusedrnn.explain import explain
from fusedrnn.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell

__version__ = "0.1.0"


def check_errors() -> None:
    """Wait for the sequence kernels launched so far and raise if a grid barrier timed out
    (fusedrnn.kernels.barrier_errors; a timeout is otherwise raised at the next fusedrnn
    call after the GPU has finished the failed launch)."""
    from fusedrnn.kernels import barrier_errors
    barrier_errors.check()


__all__ = ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell", "convert", "unconvert",
           "functional", "reference", "BACKENDS", "allow_compile", "explain", "check_errors",
           "__version__"]
