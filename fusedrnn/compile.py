"""torch.compile support: the one switch Dynamo needs for RNN modules."""
from __future__ import annotations


def allow_compile() -> None:
    """Let torch.compile trace fusedrnn's modules.

    Dynamo refuses every instance of nn.LSTM / nn.GRU (subclasses included, and fusedrnn's
    drop-ins subclass them so that ``isinstance`` keeps working) unless
    ``torch._dynamo.config.allow_rnn`` is set. fusedrnn's forward is plain tensor code plus
    one custom op per layer pass, so with the flag a model compiles with ``fullgraph=True``.
    The flag is process-wide; stock nn.LSTM modules in the same model still break the graph.
    """
    import torch._dynamo

    torch._dynamo.config.allow_rnn = True
