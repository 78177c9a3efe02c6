"""Resets inside a sequence (issue 14): ``forward(input, hx, *, resets=...)`` restarts the
state from hx where set, in every layer; the reverse direction runs each episode backwards
from its own last step; no gradient crosses a reset (fusedrnn/episodes.py).

The truth is torch's own module run on each episode separately, from the initial state,
by hand. The reference and the Triton kernels both restart inside their time loops: both
are held to it in float64, outputs, final states and every gradient.
"""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusedrnn
from fusedrnn import functional
from rnncheck import assert_close

F64 = torch.float64
MODES = ["LSTM", "GRU", "RNN"]


def _by_hand(ref, x, hx, resets, lengths):
    """torch's module on every episode alone. x (T, B, I) time-major; returns the output
    (T, B, D*H), zero past a length, and the final states per sequence: each direction's
    (the forward's from the last episode, the reverse's from the first)."""
    T, B, _ = x.shape
    D = 2 if ref.bidirectional else 1
    lstm = isinstance(ref, nn.LSTM)
    out = x.new_zeros(T, B, D * ref.hidden_size)
    finals = []
    for b in range(B):
        n = int(lengths[b])
        starts = [0] + [t for t in range(1, n) if resets[t, b]]
        pieces = []
        for s, e in zip(starts, starts[1:] + [n]):
            h0 = tuple(h[:, b:b + 1] for h in hx) if lstm else hx[:, b:b + 1]
            o, h = ref(x[s:e, b:b + 1], h0)
            out[s:e, b] = o[:, 0]
            pieces.append(h)
        first, last = pieces[0], pieces[-1]
        if not lstm:
            first, last = (first,), (last,)
        # each direction's final state: the forward's from the last episode, the reverse's
        # from the first
        finals.append([torch.stack([(f if k % D else l)[k, 0]
                                    for k in range(ref.num_layers * D)])
                       for f, l in zip(first, last)])
    finals = [torch.stack([f[i] for f in finals], 1) for i in range(len(finals[0]))]
    return out, finals


def _random_resets(T, B, gen, p=0.35):
    return torch.rand(T, B, generator=gen) < p


def _flat(result, lstm):
    out, h = result[0], result[1]
    return [out, *h] if lstm else [out, h]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("mode", MODES)
def test_resets_match_episodes_run_by_hand(mode, bidirectional, backend):
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    ref = getattr(nn, mode)(3, 5, num_layers=2, bidirectional=bidirectional, dtype=F64)
    ours = getattr(fusedrnn, mode)(3, 5, num_layers=2, bidirectional=bidirectional,
                                   dtype=F64, backend=backend)
    ours.load_state_dict(ref.state_dict())
    T, B, D = 7, 4, 2 if bidirectional else 1
    x = torch.randn(T, B, 3, dtype=F64, requires_grad=True)
    h0 = torch.randn(2 * D, B, 5, dtype=F64, requires_grad=True)
    hx = (h0, torch.randn(2 * D, B, 5, dtype=F64, requires_grad=True)) if mode == "LSTM" \
        else h0
    resets = _random_resets(T, B, gen)
    resets[:, 0] = False  # one sequence without a reset
    resets[1:, 3] = True  # one that resets at every step
    got = _flat(ours(x, hx, resets=resets), mode == "LSTM")
    want_out, want_states = _by_hand(ref, x, hx, resets, torch.full((B,), T))
    want = [want_out, *want_states]
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, 1e-10, f"output {k}")
    leaves = [x, *(hx if mode == "LSTM" else [hx]), *ref.parameters()]
    ours_leaves = [x, *(hx if mode == "LSTM" else [hx]), *ours.parameters()]
    proj = [torch.randn_like(w) for w in want]
    g_want = torch.autograd.grad(sum((w * p).sum() for w, p in zip(want, proj)), leaves)
    g_got = torch.autograd.grad(sum((g * p).sum() for g, p in zip(got, proj)), ours_leaves)
    for k, (g, w) in enumerate(zip(g_got, g_want)):
        assert_close(g, w, 1e-10, f"gradient {k}")


@pytest.mark.parametrize("mode", MODES)
def test_resets_on_every_kernel_kind(mode, kernel_mode, launches):
    """The Triton kernels (step, streaming sequence, weight-stationary) under resets equal
    the reference, and they ran."""
    gen = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    m = getattr(fusedrnn, mode)(4, 6, dtype=F64, backend="reference")
    x = torch.randn(5, 3, 4, dtype=F64, requires_grad=True)
    resets = _random_resets(5, 3, gen, 0.5)
    want = _flat(m(x, resets=resets), mode == "LSTM")
    m.backend = "triton"
    got = _flat(m(x, resets=resets), mode == "LSTM")
    for k, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, 1e-10, f"output {k}")
    gw = torch.autograd.grad(want[0].sum() + want[1].sum(), [x, *m.parameters()])
    gg = torch.autograd.grad(got[0].sum() + got[1].sum(), [x, *m.parameters()])
    for k, (g, w) in enumerate(zip(gg, gw)):
        assert_close(g, w, 1e-10, f"gradient {k}")
    assert sum(launches.values()) > 0, "the Triton kernels did not run"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidirectional", [False, True])
def test_resets_run_inside_the_kernels(mode, bidirectional, launches, monkeypatch):
    """One launch per pass and direction in sequence mode, whatever the resets: the
    restarts happen inside the time loop (no re-batching, no launch per episode)."""
    from fusedrnn.kernels.plan import KERNEL_ENV

    monkeypatch.setenv(KERNEL_ENV, "sequence")
    gen = torch.Generator().manual_seed(3)
    m = getattr(fusedrnn, mode)(4, 6, dtype=F64, bidirectional=bidirectional,
                                backend="triton")
    x = torch.randn(7, 3, 4, dtype=F64, requires_grad=True)
    out = m(x, resets=_random_resets(7, 3, gen, 0.5))[0]
    out.sum().backward()
    D = 2 if bidirectional else 1
    assert sum(launches.values()) == 2 * D, dict(launches)


@pytest.mark.parametrize("mode", MODES)
def test_resets_made_in_inference_mode_train(mode):
    """An RL rollout collects its done flags under torch.inference_mode, then trains on
    them: the kernels' backward keeps a copy."""
    m = getattr(fusedrnn, mode)(4, 6, dtype=F64, backend="triton")
    with torch.inference_mode():
        resets = torch.zeros(5, 3, dtype=torch.bool)
        resets[2, 1] = True
    x = torch.randn(5, 3, 4, dtype=F64, requires_grad=True)
    m(x, resets=resets)[0].sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_no_gradient_crosses_a_reset(backend):
    m = fusedrnn.GRU(2, 3, dtype=F64, backend=backend)
    x = torch.randn(6, 2, 2, dtype=F64, requires_grad=True)
    resets = torch.zeros(6, 2, dtype=torch.bool)
    resets[3, 0] = True
    out, _ = m(x, resets=resets)
    g, = torch.autograd.grad(out[3:, 0].sum(), x)
    assert torch.count_nonzero(g[:3, 0]) == 0  # the steps before the reset
    assert torch.count_nonzero(g[3:, 0]) > 0
    assert torch.count_nonzero(g[:, 1]) == 0   # another sequence


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_resets_that_change_nothing(backend):
    """No reset, a reset at t = 0, and resets past a sequence's end give the plain run."""
    torch.manual_seed(3)
    m = fusedrnn.LSTM(3, 4, dtype=F64, backend=backend)
    x = torch.randn(5, 3, 3, dtype=F64)
    want = m(x)
    none = torch.zeros(5, 3, dtype=torch.bool)
    first = none.clone()
    first[0] = True
    for r in (none, first):
        got = m(x, resets=r)
        assert_close(got[0], want[0], 1e-12, "output")
        assert_close(got[1][0], want[1][0], 1e-12, "h_n")
    lengths = torch.tensor([5, 3, 2])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    past = torch.zeros(5, 3, dtype=torch.bool)
    past[3:, 1] = past[2:, 2] = True  # at or past those sequences' ends
    r = pack_padded_sequence(past.unsqueeze(-1), lengths, enforce_sorted=False).data[:, 0]
    got, want = m(packed, resets=r), m(packed)
    assert_close(got[0].data, want[0].data, 1e-12, "packed output")
    assert_close(got[1][1], want[1][1], 1e-12, "packed c_n")


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_resets_with_packed_batch_first_and_unbatched_input(backend):
    torch.manual_seed(4)
    ref = nn.GRU(3, 4, bidirectional=True, dtype=F64)
    m = fusedrnn.GRU(3, 4, bidirectional=True, dtype=F64, backend=backend)
    m.load_state_dict(ref.state_dict())
    T, B = 6, 3
    x = torch.randn(T, B, 3, dtype=F64)
    h0 = torch.randn(2, B, 4, dtype=F64)
    lengths = torch.tensor([4, 6, 2])
    resets = torch.zeros(T, B, dtype=torch.bool)
    resets[2, 0] = resets[3, 1] = resets[5, 1] = True
    want_out, (want_h,) = _by_hand(ref, x, h0, resets, lengths)
    # packed: resets aligned with the packed data
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    r = pack_padded_sequence(resets.unsqueeze(-1), lengths, enforce_sorted=False).data[:, 0]
    out, h = m(packed, h0, resets=r)
    assert_close(pad_packed_sequence(out)[0], want_out[:6], 1e-10, "packed output")
    assert_close(h, want_h, 1e-10, "packed h_n")
    # batch_first: resets (B, T)
    mb = fusedrnn.GRU(3, 4, bidirectional=True, dtype=F64, backend=backend, batch_first=True)
    mb.load_state_dict(ref.state_dict())
    full = torch.zeros(T, B, dtype=torch.bool)
    full[2, 0] = True
    want_out, (want_h,) = _by_hand(ref, x, h0, full, torch.full((B,), T))
    out, h = mb(x.transpose(0, 1), h0, resets=full.t())
    assert_close(out.transpose(0, 1), want_out, 1e-10, "batch-first output")
    assert_close(h, want_h, 1e-10, "batch-first h_n")
    # unbatched: resets (T,)
    out, h = m(x[:, 0], h0[:, 0], resets=full[:, 0])
    assert_close(out, want_out[:, 0], 1e-10, "unbatched output")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("reverse", [False, True])
def test_layer_ops_take_resets(cell, reverse):
    """functional.*_layer(resets=...): the kernels equal the reference, with lengths, and
    the LSTM's cell states too."""
    gen = torch.Generator().manual_seed(5)
    T, B, I, H = 6, 3, 2, 4
    G = {"lstm": 4, "gru": 3, "rnn": 1}[cell]
    x = torch.randn(T, B, I, dtype=F64, generator=gen)
    h0 = torch.randn(B, H, dtype=F64, generator=gen)
    w = [torch.randn(G * H, I, dtype=F64, generator=gen),
         torch.randn(G * H, H, dtype=F64, generator=gen)]
    lengths = torch.tensor([6, 5, 3])
    resets = _random_resets(T, B, gen, 0.4)
    if cell == "lstm":
        c0 = torch.randn(B, H, dtype=F64, generator=gen)
        run = lambda be: functional.lstm_layer(x, h0, c0, *w, lengths=lengths,  # noqa: E731
                                               reverse=reverse, backend=be, cell_states=True,
                                               resets=resets)
    else:
        op = functional.gru_layer if cell == "gru" else functional.rnn_layer
        run = lambda be: op(x, h0, *w, lengths=lengths, reverse=reverse,  # noqa: E731
                            backend=be, resets=resets)
    for k, (g, r) in enumerate(zip(run("triton"), run("reference"))):
        assert_close(g, r, 1e-10, f"result {k}")


def test_bad_resets_are_refused_by_name():
    m = fusedrnn.LSTM(3, 4)
    x = torch.randn(5, 2, 3)
    with pytest.raises(TypeError, match="resets must be a bool tensor, got dtype"):
        m(x, resets=torch.zeros(5, 2))
    with pytest.raises(ValueError, match=r"resets must have shape \(T, B\) = \(5, 2\), got "
                                         r"\(2, 5\)"):
        m(x, resets=torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"resets must have shape \(T,\) for unbatched"):
        m(x[:, 0], resets=torch.zeros(5, 2, dtype=torch.bool))
    native = fusedrnn.LSTM(3, 4, backend="native")
    with pytest.raises(ValueError, match="resets is set, and torch's own op.*cannot serve"):
        native(x, resets=torch.zeros(5, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="cannot serve resets"):
        functional.lstm(x, None, (torch.zeros(1, 2, 4), torch.zeros(1, 2, 4)),
                        list(m._flat_weights), True, 1, 0.0, False, False, backend="native",
                        resets=torch.zeros(5, 2, dtype=torch.bool))


def test_default_backend_serves_resets_on_the_cpu():
    """"auto" goes to torch's op on the CPU, which cannot restart a state: with resets it
    takes the reference, the same numbers."""
    torch.manual_seed(6)
    m = fusedrnn.GRU(3, 4, dtype=F64)
    x = torch.randn(4, 2, 3, dtype=F64)
    resets = torch.tensor([[0, 0], [1, 0], [0, 1], [0, 0]], dtype=torch.bool)
    m.backend = "reference"
    want = m(x, resets=resets)
    m.backend = "auto"
    got = m(x, resets=resets)
    assert_close(got[0], want[0], 1e-12, "output")
