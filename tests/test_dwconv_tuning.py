"""``kernels='auto'`` on a GPU: each pass of a half-precision depthwise
convolution (forward, input gradient, weight gradient) runs ATen's kernel or
the tensor-core Triton one, whichever was faster for its key, timed once
after checking that both agree (``overlock/ops/dwconv.py``).

Without a GPU the choice machinery runs on CPU tensors: the Triton kernels
in the interpreter (conftest.py), ATen's CPU convolutions, a stand-in timer.
On a GPU, the last test runs the real thing through the model's dispatch
point."""
import logging

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import overlock
from overlock.ops import depthwise_conv2d, dwconv
from overlock.ops.autotune import AutoTuner

pytest.importorskip('triton')
from overlock.ops import triton_dwconv  # noqa: E402

DTYPE = torch.bfloat16
PASSES = ('forward', 'input_grad', 'weight_grad')


def _timer(winner, timed):
    """A stand-in for the CUDA-event timer: runs the candidate (``fn`` is
    ``functools.partial(run, triton)``) and says ``winner`` is faster."""
    def timer(fn):
        triton = fn.args[0]
        timed.append(triton)
        fn()
        return 1. if triton == (winner == 'triton') else 2.
    return timer


@pytest.fixture
def tuner(monkeypatch):
    """A fresh choice cache with a stand-in timer (``tuner.winner``)."""
    timed = []
    box = AutoTuner('test', maxsize=16)
    box.timed = timed
    box.winner = 'triton'
    box.timer = lambda fn: _timer(box.winner, timed)(fn)
    monkeypatch.setattr(dwconv, '_choices', box)
    return box


def _case(seed=0, shape=(2, 3, 9, 10), k=5, dilation=1):
    gen = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = torch.randn(n, c, h, w, generator=gen).to(DTYPE)
    weight = torch.randn(c, 1, k, k, generator=gen).to(DTYPE)
    bias = torch.randn(c, generator=gen).to(DTYPE)
    go = torch.randn(n, c, h, w, generator=gen).to(DTYPE)
    return x, weight, bias, go, dilation * (k - 1) // 2, dilation


def _step(x, weight, bias, go, padding, dilation):
    """Output and the three gradients through the tuned custom op."""
    x, weight, bias = (t.clone().requires_grad_() for t in (x, weight, bias))
    with overlock.options(kernels='auto'):
        out = dwconv._custom(x, weight, bias, padding, dilation)
        out.backward(go)
    return out.detach(), x.grad, weight.grad, bias.grad


def _expected(x, weight, bias, go, padding, dilation, use):
    """The same from the two implementations directly, ``use[pass]``."""
    if use['forward'] == 'triton':
        out = triton_dwconv.forward(x, weight, bias, padding, dilation)
    else:
        out = F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])
    gx, gw, _ = torch.ops.aten.convolution_backward(
        go, x, weight, None, [1, 1], [padding] * 2, [dilation] * 2, False,
        [0, 0], x.shape[1], [True, True, False])
    if use['input_grad'] == 'triton':
        gx = triton_dwconv.input_grad(go, weight, padding, dilation)
    if use['weight_grad'] == 'triton':
        gw = triton_dwconv.weight_grad(x, go, weight.shape[-1], padding,
                                       dilation)
    gb = go.sum((0, 2, 3), dtype=torch.float32).to(go.dtype)
    return out, gx, gw, gb


def _same(got, want):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.mark.parametrize('winner', ['triton', 'aten'])
def test_each_pass_runs_the_faster_implementation(tuner, winner):
    """Three keys timed (both candidates each), then remembered: a second
    step times nothing, and every result is the winner's, bit for bit."""
    tuner.winner = winner
    case = _case()
    got = _step(*case)
    assert len(tuner.timed) == 6 and sorted(tuner.timed) == [False] * 3 + \
        [True] * 3
    choices = dwconv.tuned_choices()
    assert sorted(key[0] for key in choices) == sorted(PASSES)
    assert set(choices.values()) == {winner}
    _same(got, _expected(*case, use=dict.fromkeys(PASSES, winner)))
    _step(*case)
    assert len(tuner.timed) == 6


def test_passes_choose_independently(tuner):
    """Forward and weight gradient by Triton, input gradient by ATen (as
    remembered choices): each result from its own implementation."""
    case = _case(seed=1)
    x, weight, _, _, _, dilation = case
    use = dict(forward='triton', input_grad='aten', weight_grad='triton')
    for pass_, label in use.items():
        key = (pass_, DTYPE, 2, 3, 9, 10, 5, dilation, None)
        tuner.choose(key, lambda label=label: [(label, None)])
    _same(_step(*case), _expected(*case, use=use))
    assert tuner.timed == []  # nothing timed


def test_size_classes_share_a_choice(tuner):
    """Maps of 33-40 rows share a size class (one timing), 41 rows start
    the next."""
    for h in (33, 36, 40, 41):
        case = _case(shape=(1, 2, h, 7), k=3)
        with torch.no_grad(), overlock.options(kernels='auto'):
            dwconv._custom(*case[:3], *case[4:])
    assert len(tuner.timed) == 4  # two size classes, two candidates
    assert sorted({key[4] for key in dwconv.tuned_choices()}) == [40, 48]


def test_size_class():
    assert [dwconv.size_class(n) for n in (1, 7, 32)] == [1, 7, 32]
    assert [dwconv.size_class(n) for n in (33, 40, 41, 64, 65)] == \
        [40, 40, 48, 64, 80]
    # OverLoCK-T's stage maps at 800x1216
    assert [dwconv.size_class(n) for n in (200, 304, 100, 152, 50, 76)] == \
        [224, 320, 112, 160, 56, 80]
    for n in range(1, 5000):  # four classes per octave, never below n
        c = dwconv.size_class(n)
        assert n <= c < max(n + 1, 1.25 * n + 1)
        assert dwconv.size_class(c) == c


def test_disagreeing_kernel_is_not_used(tuner, monkeypatch, caplog):
    """A Triton result that differs from ATen's (as a kernel miscompiled
    for some GPU would) is refused with a warning, untimed: ATen's numbers,
    and the choice is remembered."""
    monkeypatch.setattr(triton_dwconv, 'forward',
                        lambda x, *args: torch.ones_like(x))
    case = _case(seed=2)
    with caplog.at_level(logging.WARNING, logger='overlock.ops.dwconv'), \
            torch.no_grad(), overlock.options(kernels='auto'):
        out = dwconv._custom(*case[:3], *case[4:])
    assert 'differs from' in caplog.text and 'ATen is used' in caplog.text
    want = _expected(*case, use=dict.fromkeys(PASSES, 'aten'))[0]
    assert torch.equal(out, want)
    assert list(dwconv.tuned_choices().values()) == ['aten']
    assert tuner.timed == []


def test_overflowing_input_decides_later(tuner):
    """A map with infinities (an AMP step that overflowed) is not a fair
    trial: ATen's result, nothing remembered, the next call times."""
    x, weight, bias, go, padding, dilation = _case(seed=3)
    x[0, 0, 4, 4] = float('inf')
    with torch.no_grad(), overlock.options(kernels='auto'):
        out = dwconv._custom(x, weight, bias, padding, dilation)
        assert torch.equal(out, F.conv2d(x, weight, bias, 1, padding,
                                         dilation, 3))
        assert dwconv.tuned_choices() == {} and tuner.timed == []
        dwconv._custom(x.nan_to_num(posinf=0.), weight, bias, padding,
                       dilation)
    assert len(dwconv.tuned_choices()) == 1 and len(tuner.timed) == 2


def test_no_timing_while_a_cuda_graph_is_captured(tuner, monkeypatch):
    """While capturing, unseen keys run ATen untimed and stay unseen; seen
    keys keep their choice."""
    monkeypatch.setattr(dwconv, '_capturing', lambda: True)
    case = _case(seed=4)
    _same(_step(*case), _expected(*case, use=dict.fromkeys(PASSES, 'aten')))
    assert dwconv.tuned_choices() == {} and tuner.timed == []
    for pass_ in PASSES:
        key = (pass_, DTYPE, 2, 3, 9, 10, 5, 1, None)
        tuner.choose(key, lambda: [('triton', None)])
    _same(_step(*case), _expected(*case, use=dict.fromkeys(PASSES,
                                                           'triton')))


def test_which_convolutions_are_tuned(monkeypatch):
    """Half precision, an odd "same" kernel, kernels='auto', a CUDA device
    with the Triton kernels (stood in for here)."""
    x = torch.zeros(1, 4, 8, 8)
    w = torch.zeros(4, 1, 5, 5)

    def tuned(dtype=torch.float16, weight=w, padding=2, dilation=1):
        return dwconv._tuned(x, weight, padding, dilation, dtype)

    # the device check, looked up once per device (a CPU tensor's: None)
    monkeypatch.setitem(dwconv._GPUS, None, True)
    assert tuned() and tuned(torch.bfloat16)
    assert not tuned(torch.float32) and not tuned(torch.float64)
    assert tuned(weight=w, padding=4, dilation=2)
    assert not tuned(padding=1)  # not "same"
    assert not tuned(weight=torch.zeros(4, 1, 4, 4), padding=2)  # even
    assert not tuned(weight=torch.zeros(2, 1, 5, 5))  # not depthwise
    with overlock.options(kernels='torch'):
        assert not tuned()
    with overlock.options(kernels='triton'):
        assert not tuned()  # forced: no choice to make
    with overlock.options(reference=True):
        assert not tuned()
    monkeypatch.setitem(dwconv._GPUS, None, False)
    assert not tuned()  # no GPU, one older than sm_80, or no triton


def test_compute_dtype_follows_autocast():
    x = torch.zeros(1, 2, 4, 4)
    assert dwconv._compute_dtype(x) == torch.float32
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert dwconv._compute_dtype(x) == torch.bfloat16
        assert dwconv._compute_dtype(x.double()) == torch.float64


def test_auto_tuner_timer_and_single_candidate():
    """The injected timer times each candidate; one candidate is taken
    untimed; ``get`` never times."""
    timed = []
    tuner = AutoTuner('test', timer=lambda fn: timed.append(fn) or fn())
    assert tuner.get('k') is None
    assert tuner.choose('k', lambda: [('a', lambda: 2.), ('b', lambda: 1.)]) \
        == 'b'
    assert len(timed) == 2 and tuner.get('k') == 'b'
    assert tuner.choose('j', lambda: [('only', None)]) == 'only'
    assert len(timed) == 2 and tuner.choices() == {'k': 'b', 'j': 'only'}


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16], ids=str)
def test_cuda_half_precision_is_tuned_through_the_dispatch_point(dtype):
    """On a GPU: a half-precision map (and autocast's) goes through the
    custom op and is tuned per pass; float32 stays with ATen. Numbers equal
    F.conv2d's to half-precision rounding."""
    dwconv._choices.clear()
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 16, 40, 52, generator=gen).cuda()
    w = torch.randn(16, 1, 7, 7, generator=gen).cuda()
    go = torch.randn(2, 16, 40, 52, generator=gen).cuda()
    for amp in (False, True):
        xi = (x if amp else x.to(dtype)).requires_grad_()
        wi = (w if amp else w.to(dtype)).requires_grad_()
        with FlopCounterMode(display=False) as counter, \
                torch.autocast('cuda', dtype=dtype, enabled=amp):
            out = depthwise_conv2d(xi, wi, None, 3)
            out.backward(go.to(dtype))
        ops = counter.get_flop_counts()['Global']
        assert torch.ops.overlock.depthwise_conv2d in ops
        xr, wr = (t.detach().double().requires_grad_() for t in (xi, wi))
        ref = F.conv2d(xr, wr, None, 1, 3, 1, 16)
        ref.backward(go.to(dtype).double())
        for a, b in ((out, ref), (xi.grad, xr.grad), (wi.grad, wr.grad)):
            err = (a.double() - b).abs().max() / b.abs().max()
            assert err < 2e-2
    assert sorted({key[0] for key in dwconv.tuned_choices()}) == \
        sorted(PASSES)
    with FlopCounterMode(display=False) as counter:
        depthwise_conv2d(x, w, None, 3)
    assert torch.ops.overlock.depthwise_conv2d not in \
        counter.get_flop_counts()['Global']


def test_tuned_path_compiles_as_one_graph(tuner, monkeypatch):
    """Under torch.compile the dispatch decision (``_tuned``, with the GPU
    check as a constant) traces without a graph break and leaves the custom
    op in the graph, whose implementation chooses per pass at run time: the
    same bits as eager (a CUDA device stood in for)."""
    monkeypatch.setitem(dwconv._GPUS, None, True)  # a CPU tensor's index

    def conv(x, weight, bias):
        assert dwconv._tuned(x, weight, 2, 1, x.dtype)
        return dwconv._custom(x, weight, bias, 2, 1)

    x, weight, bias, go, padding, dilation = _case(seed=6)
    want = _step(x, weight, bias, go, padding, dilation)
    assert len(tuner.timed) == 6
    torch._dynamo.reset()
    explained = torch._dynamo.explain(conv)(x, weight, bias)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    compiled = torch.compile(conv, backend='aot_eager', fullgraph=True)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, weight, bias))
    with overlock.options(kernels='auto'):
        out = compiled(xg, wg, bg)
        out.backward(go)
    _same((out.detach(), xg.grad, wg.grad, bg.grad), want)
    assert len(tuner.timed) == 6  # the choices made eagerly were kept
