"""convert() keeps the very same parameters; state_dict and repr match torch's both ways."""
import abc
import copy
import io
import pickle

import pytest
import torch
from torch import nn

import fusedrnn


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(3, 4), nn.Tanh())
        self.rnns = nn.ModuleList([nn.LSTM(4, 6, batch_first=True), nn.GRU(6, 5),
                                   nn.RNN(5, 5, nonlinearity="relu")])
        self.cells = nn.ModuleDict({"lstm": nn.LSTMCell(5, 5), "gru": nn.GRUCell(5, 5),
                                    "rnn": nn.RNNCell(5, 5)})

    def forward(self, x):
        y, _ = self.rnns[0](self.encoder(x))
        y, _ = self.rnns[1](y.transpose(0, 1))
        y, _ = self.rnns[2](y)
        h, c = self.cells["lstm"](y[-1])
        return self.cells["rnn"](self.cells["gru"](h, c))


def test_convert_nested_model_same_outputs_same_parameters():
    model = Model().double()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    before = model(x)
    params = {n: p for n, p in model.named_parameters()}
    out = fusedrnn.convert(model, backend="reference")
    assert out is model
    assert type(model.rnns[0]) is fusedrnn.LSTM and type(model.rnns[1]) is fusedrnn.GRU
    assert type(model.rnns[2]) is fusedrnn.RNN
    assert type(model.cells["lstm"]) is fusedrnn.LSTMCell
    assert type(model.cells["gru"]) is fusedrnn.GRUCell
    assert type(model.cells["rnn"]) is fusedrnn.RNNCell
    assert all(m.backend == "reference" for m in [*model.rnns, *model.cells.values()])
    for n, p in model.named_parameters():
        assert p is params[n], n
    torch.testing.assert_close(model(x), before, rtol=1e-12, atol=1e-12)
    # gradients land on the original parameter objects (optimizer state stays valid)
    model(x).sum().backward()
    assert all(p.grad is not None for p in params.values())


def test_unconvert_gives_torch_modules_back():
    """unconvert is convert's inverse: torch's exact classes over the same parameters (so
    tools keyed on torch's classes, such as quantize_dynamic, see them again), training
    mode kept, parametrizations kept; fusedrnn's own options raise rather than vanish."""
    model = Model().double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    before, params = model(x), dict(model.named_parameters())
    fusedrnn.convert(model, backend="reference")
    assert fusedrnn.unconvert(model) is model
    assert [type(m) for m in model.rnns] == [nn.LSTM, nn.GRU, nn.RNN]
    assert [type(m) for m in model.cells.values()] == [nn.LSTMCell, nn.GRUCell, nn.RNNCell]
    assert not any(hasattr(m, "backend") for m in model.modules())
    assert all(p is params[n] for n, p in model.named_parameters())
    assert not model.rnns[0].training
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    quantized = torch.ao.quantization.quantize_dynamic(
        fusedrnn.unconvert(fusedrnn.convert(Model())), dtype=torch.qint8)
    dynamic = torch.ao.nn.quantized.dynamic
    assert type(quantized.rnns[0]) is dynamic.LSTM
    assert type(quantized.cells["gru"]) is dynamic.GRUCell

    lone = fusedrnn.unconvert(fusedrnn.GRU(2, 3))
    assert type(lone) is nn.GRU
    pickle.loads(pickle.dumps(lone))
    wn = torch.nn.utils.parametrizations.weight_norm
    param = fusedrnn.unconvert(fusedrnn.convert(wn(nn.LSTM(3, 4), "weight_hh_l0")))
    assert type(param).__bases__ == (nn.LSTM,)
    assert torch.nn.utils.parametrize.is_parametrized(param, "weight_hh_l0")
    with pytest.raises(ValueError, match=r"'0' has zoneout set"):
        fusedrnn.unconvert(nn.Sequential(fusedrnn.LSTM(3, 4, zoneout=0.1)))


def test_convert_keeps_mode_and_leaves_converted_alone():
    model = nn.Sequential(nn.LSTM(3, 4)).eval()
    fusedrnn.convert(model)
    first = model[0]
    assert not first.training and isinstance(first, nn.LSTM)
    fusedrnn.convert(model, backend="native")
    assert model[0] is first and first.backend == "auto"
    rnn = nn.GRU(2, 3)
    assert type(fusedrnn.convert(rnn)) is fusedrnn.GRU


@pytest.mark.parametrize("parametrization", ["orthogonal", "weight_norm"])
def test_convert_keeps_parametrizations(parametrization):
    """A torch RNN module with a parametrized weight (torch.nn.utils.parametrize makes its
    class Parametrized<Cls>, a subclass of torch's) becomes the drop-in parametrized the
    same way: the same outputs on the kernels, gradients on the parametrization's
    originals, the same state_dict keys."""
    make = getattr(torch.nn.utils.parametrizations, parametrization)
    model = nn.Sequential(make(nn.LSTM(3, 4, num_layers=2), "weight_hh_l1"))
    x = torch.randn(5, 2, 3)
    before, keys = model(x)[0], list(model.state_dict())
    originals = list(model[0].parametrizations.weight_hh_l1.parameters())
    fusedrnn.convert(model, backend="triton")
    assert isinstance(model[0], fusedrnn.LSTM) and type(model[0]) is not fusedrnn.LSTM
    assert torch.nn.utils.parametrize.is_parametrized(model[0], "weight_hh_l1")
    torch.testing.assert_close(model(x)[0], before, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == keys
    model(x)[0].sum().backward()
    assert list(model[0].parametrizations.weight_hh_l1.parameters()) == originals
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in originals)


class ZeroLengthLSTM(abc.ABC, nn.LSTM):
    """As pytorch-forecasting's LSTM (models/nn/rnn.py, under its TemporalFusionTransformer,
    DeepAR and RecurrentNetwork): an ABC over torch's class whose forward takes more
    arguments and calls torch's through super()."""

    @abc.abstractmethod
    def scale(self) -> float:
        ...

    def forward(self, x, hx=None, lengths=None):
        if lengths is None:
            return super().forward(x * self.scale(), hx=hx)
        packed = nn.utils.rnn.pack_padded_sequence(x * self.scale(), lengths.clamp(min=1),
                                                   enforce_sorted=False)
        out, state = super().forward(packed, hx)
        return nn.utils.rnn.pad_packed_sequence(out)[0], state


class Halved(ZeroLengthLSTM):
    def scale(self) -> float:
        return 0.5


class PlainGRU(nn.GRU):
    pass


def _state_dicts_equal(a, b):
    assert list(a) == list(b) and all(a[k] is b[k] or torch.equal(a[k], b[k]) for k in a)


def test_convert_makes_a_users_subclass_a_drop_in(launches):
    """A user's subclass of a torch RNN class becomes an instance of (subclass, drop-in):
    its own forward and methods run, torch's forward under them is the kernels'; same
    parameter objects, state_dict, repr and isinstance; deep copies, pickles and
    torch.save keep its class; unconvert and scripting give the subclass back."""
    model = nn.Sequential(Halved(3, 4, num_layers=2))
    x, lengths = torch.randn(6, 3, 3), torch.tensor([6, 2, 4])
    before, before_packed = model[0](x)[0], model[0](x, lengths=lengths)[0]
    params, keys, text = list(model.parameters()), model.state_dict(), repr(model)
    fusedrnn.convert(model, backend="triton")
    rnn = model[0]
    assert isinstance(rnn, Halved) and isinstance(rnn, fusedrnn.LSTM) and type(rnn) is not Halved
    assert rnn.backend == "triton" and repr(model) == text
    assert all(a is b for a, b in zip(params, model.parameters()))
    _state_dicts_equal(model.state_dict(), keys)
    out = rnn(x)[0]
    assert sum(launches.values()) > 0, "the subclass's super().forward ran no kernel"
    packed = rnn(x, lengths=lengths)[0]
    torch.testing.assert_close(out, before, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(packed, before_packed, rtol=1e-5, atol=1e-6)
    (out.sum() + packed.sum()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    for copied in (copy.deepcopy(rnn), pickle.loads(pickle.dumps(rnn))):
        assert type(copied) is type(rnn) and copied.backend == "triton"
        torch.testing.assert_close(copied(x)[0], before, rtol=1e-5, atol=1e-6)
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    assert type(torch.load(buffer, weights_only=False)[0]) is type(rnn)
    assert fusedrnn.convert(rnn) is rnn  # already a drop-in
    assert type(fusedrnn.unconvert(model)[0]) is Halved
    assert all(a is b for a, b in zip(params, model.parameters()))
    torch.testing.assert_close(model[0](x)[0], before)
    # torch.jit.script compiles the subclass itself in a drop-in's place (torch.jit cannot
    # script an RNN subclass, converted or not: its forward's overloads are torch's class's)
    gru = fusedrnn.convert(PlainGRU(3, 4), backend="reference")
    assert isinstance(gru, fusedrnn.GRU) and gru.backend == "reference"
    assert type(gru.__prepare_scriptable__()) is PlainGRU
    # a parametrized subclass: the same class parametrize makes, over the twin
    wn = torch.nn.utils.parametrizations.weight_norm(PlainGRU(3, 4), "weight_hh_l0")
    expected = wn(x)[0]
    twin = fusedrnn.convert(wn, backend="triton")
    assert isinstance(twin, PlainGRU) and isinstance(twin, fusedrnn.GRU)
    assert torch.nn.utils.parametrize.is_parametrized(twin, "weight_hh_l0")
    torch.testing.assert_close(twin(x)[0], expected, rtol=1e-5, atol=1e-6)
    back = fusedrnn.unconvert(twin)
    assert isinstance(back, PlainGRU) and not isinstance(back, fusedrnn.GRU)


def test_convert_keeps_optimizer_and_tied_weights_working():
    model = nn.Sequential(nn.LSTM(3, 3))
    model[0].weight_hh_l0 = model[0].weight_ih_l0  # tied
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    fusedrnn.convert(model, backend="reference")
    assert model[0].weight_hh_l0 is model[0].weight_ih_l0
    before = model[0].weight_ih_l0.detach().clone()
    model(torch.randn(2, 1, 3))[0].sum().backward()
    opt.step()
    assert not torch.equal(before, model[0].weight_ih_l0)


@pytest.mark.parametrize("mode,args,kwargs", [
    ("LSTM", (3, 5), dict(num_layers=2, bidirectional=True, proj_size=2, bias=False)),
    ("GRU", (3, 5), dict(num_layers=2, batch_first=True, dropout=0.2)),
    ("LSTMCell", (3, 5), dict(bias=False)),
    ("GRUCell", (3, 5), {}),
    ("RNN", (3, 5), dict(num_layers=2, nonlinearity="relu", bidirectional=True)),
    ("RNNCell", (3, 5), dict(nonlinearity="relu", bias=False)),
])
def test_state_dict_and_repr(mode, args, kwargs):
    ref = getattr(nn, mode)(*args, **kwargs)
    ours = getattr(fusedrnn, mode)(*args, **kwargs)
    assert repr(ours) == repr(ref)
    assert isinstance(ours, getattr(nn, mode))
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    ours.load_state_dict(ref.state_dict())
    for k, v in ours.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k])
    back = getattr(nn, mode)(*args, **kwargs)
    back.load_state_dict(ours.state_dict())
    for k, v in back.state_dict().items():
        assert torch.equal(v, ours.state_dict()[k])


def test_initialization_matches_torch():
    torch.manual_seed(3)
    ref = nn.LSTM(4, 6, num_layers=2, proj_size=3)
    torch.manual_seed(3)
    ours = fusedrnn.LSTM(4, 6, num_layers=2, proj_size=3)
    for (n, a), (_, b) in zip(ref.named_parameters(), ours.named_parameters()):
        assert torch.equal(a, b), n


@pytest.mark.parametrize("cls", [fusedrnn.LSTM, fusedrnn.RNN])
def test_pickle_deepcopy_and_to(cls):
    m = cls(3, 4, backend="reference")
    for clone in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert type(clone) is cls and clone.backend == "reference"
        x = torch.randn(2, 1, 3)
        torch.testing.assert_close(clone(x)[0], m(x)[0])
    m64 = m.double()
    assert m64._flat_weights[0].dtype == torch.float64
    assert m64(torch.randn(2, 1, 3, dtype=torch.float64))[0].dtype == torch.float64


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN", "LSTMCell", "GRUCell", "RNNCell"])
def test_constructor_signature_is_torchs_plus_backend(name):
    """inspect.signature of a drop-in is torch's class's plus the keyword-only ``backend``,
    so tools that read it behave as on torch's: torch.nn.utils.skip_init (it asks for a
    ``device`` argument) builds the cells, and refuses the LSTM, GRU and RNN (torch's
    constructors take ``*args, **kwargs``) as it refuses torch's."""
    import inspect

    ours, theirs = getattr(fusedrnn, name), getattr(nn, name)
    params = inspect.signature(ours).parameters
    assert params["backend"].kind is inspect.Parameter.KEYWORD_ONLY
    assert [p for p in params if p != "backend" and p not in fusedrnn.modules.FUSED_OPTIONS] \
        == list(inspect.signature(theirs).parameters)
    try:
        torch.nn.utils.skip_init(theirs, 3, 4)
    except RuntimeError as e:
        with pytest.raises(RuntimeError, match=str(e)):
            torch.nn.utils.skip_init(ours, 3, 4)
        return
    made = torch.nn.utils.skip_init(ours, 3, 4, backend="reference")
    assert type(made) is ours and made.backend == "reference" and made.weight_hh.shape[1] == 4


def test_convert_leaves_a_subclass_it_cannot_extend_alone():
    """A subclass whose class cannot be combined with the drop-in (here an __init_subclass__
    that refuses further subclasses) is left as it is, torch's forward under it, rather than
    failing the conversion of the whole model."""
    class Sealed(nn.GRU):
        def __init_subclass__(cls, **kwargs):
            raise RuntimeError("sealed")

    model = nn.Sequential(Sealed(3, 4), nn.LSTM(4, 4))
    fusedrnn.convert(model)
    assert type(model[0]) is Sealed and type(model[1]) is fusedrnn.LSTM


def test_a_subclass_forward_runs_once_under_fx_and_compile():
    """Where fusedrnn would run a module's call again (fx's call_module leaf, the eager
    forward under torch.compile for the options drawn in Python), a converted subclass's
    own forward must not run twice: fx traces into it and fails on its control flow as on
    the unconverted subclass, a subclass that keeps torch's forward stays a leaf, and
    torch.compile gives eager's numbers."""
    x = torch.randn(6, 3, 3)
    for model in (nn.Sequential(Halved(3, 4)), fusedrnn.convert(nn.Sequential(Halved(3, 4)))):
        with pytest.raises(torch.fx.proxy.TraceError):
            torch.fx.symbolic_trace(model)
    plain = fusedrnn.convert(nn.Sequential(PlainGRU(3, 4)), backend="reference")
    torch.testing.assert_close(torch.fx.symbolic_trace(plain)(x)[0], plain(x)[0])

    fusedrnn.allow_compile()
    model = fusedrnn.convert(nn.Sequential(Halved(3, 4)), backend="reference")
    model[0].weight_dropout = 0.3  # (drawn in Python: its forward runs outside the graph)
    torch.manual_seed(1)
    eager = model(x)[0]
    torch._dynamo.reset()
    torch.manual_seed(1)
    torch.testing.assert_close(torch.compile(model, backend="eager")(x)[0], eager)
