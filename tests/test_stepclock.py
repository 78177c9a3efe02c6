"""The weight-stationary kernels' step clocks (kernels/stepclock.py; bench.phases reads
them on a GPU): every tile's line of every step written, forward and backward, both
directions of a paired launch, and nothing else changed. Under the interpreter a slot
holds 8 s + slot (its layout); on a GPU, clocks that run forward."""
import pytest
import torch

from fusedrnn import functional
from fusedrnn.kernels import stepclock
from test_kernels import (DEVICE, _bidirectional_one_launch_per_pass, _gru_args, _lstm_args,
                          _rnn_args, _rnn_layer, _run)


def _check_lines(rec, T):
    ck = rec["clocks"].cpu()
    assert ck.shape == (rec["n_u"] * rec["groups"] * rec["dirs"], T, stepclock.SLOTS)
    if DEVICE == "cpu":
        want = torch.arange(T)[:, None] * 8 + torch.arange(6)[None, :]
        assert torch.equal(ck[..., :6], want.expand(ck.shape[0], T, 6)), \
            f"{rec['kind']}: a tile's line is not where it belongs"
        assert (ck[..., 6:] == -1).all(), "slots 6 and 7 are not used"
    else:
        assert (ck[..., :6] >= 0).all(), f"{rec['kind']}: a slot was never written"
        # one SM's cycle counter, forward through each step and into the next
        for a, b in ((0, 1), (1, 2), (2, 3), (4, 5)):
            assert (ck[..., a] <= ck[..., b]).all(), f"{rec['kind']}: slot {a} after {b}"
        assert (ck[:, :-1, 3] <= ck[:, 1:, 0]).all()


@pytest.mark.parametrize("cell,dtype,B,H", [("lstm", torch.bfloat16, 20, 40),
                                            ("gru", torch.float32, 3, 8),
                                            ("rnn", torch.float16, 20, 40)])
def test_clocks_cover_every_tile_and_step(cell, dtype, B, H, poison, launches, monkeypatch):
    """LSTM/GRU/RNN, forward and backward: several tiles (B=20 H=40; one program looping
    over them under the interpreter) and one (B=3 H=8, resident). The outputs and every
    gradient are the same bit for bit with the clocks as without."""
    from fusedrnn.kernels.plan import KERNEL_ENV

    monkeypatch.setenv(KERNEL_ENV, "stationary")
    fn, args = {"lstm": (functional.lstm_layer, _lstm_args(6, B, 5, H, 0, True, dtype, True)),
                "gru": (functional.gru_layer, _gru_args(6, B, 5, H, True, dtype, True)),
                "rnn": (_rnn_layer("tanh"), _rnn_args(6, B, 5, H, True, dtype, True))}[cell]
    plain = _run(fn, args, "triton", reverse=True)
    with stepclock.recording() as recs:
        clocked = _run(fn, args, "triton", reverse=True)
    assert stepclock._RECORDS is None
    assert [r["kind"] for r in recs] == ["fwd", "bwd"]
    for rec in recs:
        _check_lines(rec, 6)
    for k in plain:
        assert torch.equal(clocked[k], plain[k]), f"{k}: differs with the clocks on"
    assert launches["stationary_fwd_kernel"] == launches["stationary_bwd_kernel"] == 2


def test_clocks_of_a_paired_launch(poison, launches, monkeypatch):
    """Both directions in one launch (2 layers, packed): a line for each direction's
    tiles, and the result still the reference's."""
    with stepclock.recording() as recs:
        _bidirectional_one_launch_per_pass("gru", 20, 8, monkeypatch, torch.float32)
    assert [(r["kind"], r["dirs"]) for r in recs] == [("fwd", 2)] * 2 + [("bwd", 2)] * 2
    for rec in recs:
        _check_lines(rec, 5)
