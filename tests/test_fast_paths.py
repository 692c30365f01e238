"""The performance paths give the numbers of the plain ones: the fused
inference path, the banded ContMix aggregation and selective recomputation
in training."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import TINY_ARCH, randomize_
import overlock
from overlock import OverLoCK, ops
from overlock.fused import softmax_


@pytest.fixture
def plain_then_fused():
    """Run a callable with the fused inference path off, then on."""

    def run(fn):
        with overlock.options(fast_inference=False):
            plain = fn()
        return plain, fn()

    return run


def _tiny(seed=0, **kw):
    return randomize_(OverLoCK(TINY_ARCH, **kw), seed=seed).eval()


def _assert_rel(out, ref, tol=1e-5):
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < tol, f'relative error {err:.2e}'


@pytest.mark.parametrize('fuse_overview', [True, False])
@pytest.mark.parametrize('batch,size', [(1, (64, 64)), (2, (45, 71)),
                                        (1, (20, 20)), (2, (9, 13))])
def test_fused_inference_equals_plain_path(plain_then_fused, fuse_overview,
                                           batch, size):
    """Including maps smaller than the kernels (ContMix on an enlarged map)."""
    model = _tiny(fuse_overview=fuse_overview)
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        plain, fused = plain_then_fused(lambda: model(x))
    for a, b in zip(fused, plain):
        assert a.shape == b.shape and a.is_contiguous()
        _assert_rel(a, b)


def test_fused_inference_keeps_channels_last_input_format(plain_then_fused):
    model = _tiny()
    x = torch.randn(1, 3, 48, 40).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        plain, fused = plain_then_fused(lambda: model(x))
    for a, b in zip(fused, plain):
        assert a.is_contiguous(memory_format=torch.channels_last)
        _assert_rel(a, b)


def test_fused_inference_is_not_used_with_autograd_or_in_training():
    model = _tiny()
    x = torch.randn(1, 3, 32, 32)
    outs = model(x)  # eval, grad enabled: plain path, differentiable
    assert all(o.requires_grad for o in outs)
    assert '_fused_cache' not in model.blocks1[0].__dict__
    with torch.no_grad():
        model(x)
    assert '_fused_cache' in model.blocks1[0].__dict__


def test_fused_inference_follows_weight_changes(plain_then_fused):
    model = _tiny()
    x = torch.randn(1, 3, 40, 40)
    with torch.no_grad():
        before = model(x)
        model.blocks1[0].proj[2].running_mean.add_(0.5)
        model.sub_blocks3[0].mlp[3].gamma.mul_(3.)
        model.sub_blocks3[1].rpb2.add_(1.)
        plain, fused = plain_then_fused(lambda: model(x))
    assert not torch.allclose(before[3], fused[3])
    for a, b in zip(fused, plain):
        _assert_rel(a, b)


def test_fused_inference_deploy_form_and_float64(plain_then_fused):
    model = _tiny(seed=3)
    deploy = copy.deepcopy(model).reparameterize()
    x = torch.randn(1, 3, 37, 52)
    with torch.no_grad():
        ref = model(x)
        for a, b in zip(deploy(x), ref):
            _assert_rel(a, b)
        model64 = copy.deepcopy(model).double()
        plain, fused = plain_then_fused(lambda: model64(x.double()))
    for a, b in zip(fused, plain):
        assert a.dtype == torch.float64
        _assert_rel(a, b, 1e-10)


def test_fused_inference_classifier(plain_then_fused):
    model = randomize_(OverLoCK(TINY_ARCH, num_classes=7)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain, fused = plain_then_fused(lambda: model(x))
    assert fused.shape == (2, 7)
    _assert_rel(fused, plain)


# ----------------------------------------------------------------- ops
@pytest.fixture
def generic_flavour(monkeypatch):
    """The fused path's generic flavour (CUDA's: NCHW, plain convolutions,
    the ContMix aggregation op) on CPU float32."""
    from overlock import fused
    monkeypatch.setattr(fused, 'native_cpu', lambda x: False)


@pytest.mark.parametrize('fuse_overview', [True, False])
@pytest.mark.parametrize('batch,size', [(1, (64, 64)), (2, (45, 71)),
                                        (1, (9, 13))])
def test_generic_fused_inference_equals_plain_path(generic_flavour,
                                                   plain_then_fused,
                                                   fuse_overview, batch,
                                                   size):
    model = _tiny(seed=5, fuse_overview=fuse_overview)
    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        plain, fused = plain_then_fused(lambda: model(x))
    assert '_fused_cache' in model.sub_blocks3[0].__dict__
    for a, b in zip(fused, plain):
        assert a.shape == b.shape
        _assert_rel(a, b)


def test_both_flavours_share_the_caches(monkeypatch, plain_then_fused):
    """The CPU flavour's window-major bias and the generic flavour's
    pixel-major one live side by side in the same cache (keyed by layout:
    before, the second flavour to run read the first one's bias)."""
    from overlock import fused
    model = _tiny(seed=4)
    x = torch.randn(1, 3, 80, 160)
    with torch.no_grad():
        native = model(x)
        monkeypatch.setattr(fused, 'native_cpu', lambda x: False)
        plain, generic = plain_then_fused(lambda: model(x))
    for n, g, p in zip(native, generic, plain):
        _assert_rel(n, p)
        _assert_rel(g, p)


def test_generic_fused_inference_classifier(generic_flavour,
                                            plain_then_fused):
    model = randomize_(OverLoCK(TINY_ARCH, num_classes=5), seed=2).eval()
    x = torch.randn(2, 3, 40, 48)
    with torch.no_grad():
        plain, fused = plain_then_fused(lambda: model(x))
    _assert_rel(fused, plain)


class _CountOps:
    """Dispatched operations by name (a TorchDispatchMode)."""

    def __enter__(self):
        from collections import Counter
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(mode, func, types, args=(), kwargs=None):
                self.ops[str(func.overloadpacket)] += 1
                return func(*args, **(kwargs or {}))

        self.ops = Counter()
        self.mode = Mode()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)


def test_fused_inference_under_autocast_casts_weights_once():
    """Under autocast the blocks run in its dtype on folded weights cast
    once and cached per dtype: the plain path casts every weight on every
    call (each cast a kernel launch on a GPU). Same numbers as the plain
    path under autocast, to bfloat16 rounding."""
    model = _tiny(seed=6)
    x = torch.randn(2, 3, 48, 56)

    def run():
        with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16):
            model(x)  # builds the caches
            with _CountOps() as count:
                outs = model(x)
        return outs, count.ops

    with torch.no_grad():
        ref = model(x)
    with overlock.options(fast_inference=False):
        plain, plain_ops = run()
    fused, fused_ops = run()
    cache = model.sub_blocks3[0].__dict__['_fused_cache'][1]
    assert torch.bfloat16 in cache and None in cache
    assert cache[torch.bfloat16]['q_w'].dtype == torch.bfloat16
    assert cache[torch.bfloat16]['proj_w'].dtype == torch.float32
    casts, plain_casts = fused_ops['aten._to_copy'], plain_ops['aten._to_copy']
    assert plain_casts > 5 * casts, (plain_casts, casts)
    assert sum(fused_ops.values()) < 0.7 * sum(plain_ops.values())
    n_bns = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert fused_ops['aten.native_batch_norm'] < n_bns / 5
    for f, p, r in zip(fused, plain, ref):
        assert torch.isfinite(f).all()
        # the bfloat16 error of either path against float32, and each other
        err = ((f.float() - r).norm() / r.norm()).item()
        assert err < 0.03
        assert ((f.float() - p.float()).norm() / r.norm()).item() < 0.03
    # float32 afterwards: the float32 entry, not the bfloat16 one
    with torch.no_grad():
        for a, b in zip(model(x), ref):
            assert a.dtype == torch.float32
            _assert_rel(a, b)


@pytest.mark.parametrize('act,ref', [('none', lambda y: y), ('gelu', F.gelu),
                                     ('swish', F.silu),
                                     ('sigmoid', torch.sigmoid)])
@pytest.mark.parametrize('channels_last', [False, True])
def test_conv_act(act, ref, channels_last):
    torch.manual_seed(0)
    x = torch.randn(2, 8, 11, 13)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(16, 8, 1, 1), torch.randn(16)
    wd = torch.randn(8, 1, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(ops.conv_act(x, w, b, act=act),
                                   ref(F.conv2d(x, w, b)), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(
            ops.conv_act(x, wd, None, 1, 8, act=act),
            ref(F.conv2d(x, wd, None, 1, 1, 1, 8)), rtol=1e-5, atol=1e-5)
        other = torch.randn(2, 16, 11, 13)
        torch.testing.assert_close(
            ops.conv_act(x, w, b, add=other), F.conv2d(x, w, b) + other,
            rtol=1e-5, atol=1e-5)


def test_conv_act_bad_arguments():
    x, w = torch.randn(1, 2, 4, 4), torch.randn(2, 2, 1, 1)
    with pytest.raises(ValueError, match='act must be one of'):
        ops.conv_act(x, w, act='relu6')
    with pytest.raises(ValueError, match='either act or add'):
        ops.conv_act(x, w, act='gelu', add=x)


@pytest.mark.parametrize('layout', ['cf', 'cl', 'strided'])
def test_spatial_l2_norm(layout):
    x = torch.randn(3, 5, 70, 90)
    if layout == 'cl':
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == 'strided':
        x = x[:, :, ::2]
    ref = x.square().sum((2, 3), keepdim=True).sqrt()
    torch.testing.assert_close(ops.spatial_l2_norm(x, chunk=1000), ref)


@pytest.mark.parametrize('mode', ['band', 'slices'])
@pytest.mark.parametrize('h,w,k', [(9, 70, 5), (7, 7, 7), (12, 10, 5)])
def test_contmix_modes_equal_reference(mode, h, w, k):
    """Both implementations (wide maps use column blocks in band mode)."""
    torch.manual_seed(0)
    attn = torch.rand(2, 3, h, w, k * k, requires_grad=True)
    value = torch.randn(2, 3, h, w, 4, requires_grad=True)
    ref = ops.contmix_aggregate_reference(attn, value, k)
    go = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, (attn, value), go)
    with overlock.options(contmix=mode):
        out = ops.contmix_aggregate(attn, value, k)
        grads = torch.autograd.grad(out, (attn, value), go)
        with torch.no_grad():
            wm = torch.zeros_like(value)
            ops.aggregate_window_major(
                attn.detach().permute(0, 1, 4, 2, 3), value.detach(), k, wm)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(wm, ref.detach(), rtol=0, atol=1e-5)
    for a, b in zip(grads, g_ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_contmix_band_gradcheck():
    with overlock.options(contmix='band'):
        attn = torch.rand(1, 2, 6, 40, 9, dtype=torch.float64,
                          requires_grad=True)
        value = torch.randn(1, 2, 6, 40, 3, dtype=torch.float64,
                            requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda a, v: ops.contmix_aggregate(a, v, 3), (attn, value))


def test_contmix_mode_errors():
    with pytest.raises(ValueError, match=r"contmix must be one of \('auto', 'band', 'slices'\)"):
        ops.set_contmix_mode('fast')


def test_softmax_in_place():
    x = torch.randn(2, 3, 11, 4, 5)
    ref = x.softmax(2)
    out = softmax_(x, 2)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, ref)


# ------------------------------------------------- selective recomputation
@pytest.mark.parametrize('with_cp', [False, True])
def test_recomputation_same_numbers_and_running_stats(with_cp):
    """Selective (default) and full-block recomputation give the gradients
    and the BatchNorm running statistics of storing everything (in float64:
    the recomputed segments sum some gradients in another order, and the
    tiny model's small batch amplifies float32's rounding of that)."""
    torch.manual_seed(0)
    ref = _tiny(selective_cp=False).train().double()
    other = OverLoCK(TINY_ARCH, with_cp=with_cp).train().double()
    other.load_state_dict(ref.state_dict())
    assert other.blocks1[0].selective_cp and not ref.blocks1[0].selective_cp
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64)
    grads = []
    for m in (ref, other):
        xi = x.clone().requires_grad_(True)
        outs = m(xi)
        sum((o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o))
            .sum() for o in outs).backward()
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    assert all(g is not None for g in grads[1])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    sd_ref, sd = ref.state_dict(), other.state_dict()
    for k in sd_ref:
        if 'running' in k or 'num_batches' in k:
            torch.testing.assert_close(sd[k], sd_ref[k], rtol=1e-12,
                                       atol=1e-14, msg=k)


def test_reference_mode_runs_the_official_structure():
    """The benchmark's naive baseline: no fused path, no merged kernels, same
    numbers."""
    model = _tiny(seed=5)
    x = torch.randn(1, 3, 40, 44)
    fresh = copy.deepcopy(model)
    with torch.no_grad():
        ours = model(x)
        with overlock.options(reference=True):
            naive = fresh(x)
    assert '_fused_cache' not in fresh.blocks1[0].__dict__
    assert '_fused_cache' not in fresh.blocks1[0].proj[1].__dict__
    for a, b in zip(ours, naive):
        _assert_rel(a, b)


def test_tracing_uses_portable_ops():
    """torch.jit.trace (and ONNX export, which traces) must not record the
    fused path's oneDNN-only ops."""
    model = _tiny(seed=2)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        graph = str(traced.inlined_graph)
        assert '_convolution_pointwise' not in graph
        for a, b in zip(traced(x), model(x)):
            _assert_rel(a, b)


def test_traced_shortcut_conv_follows_the_weights_dtype():
    """A traced graph holds no cached constant of a fixed dtype / device
    (the 3x3 shortcut's identity tap is built from the weight)."""
    from overlock.layers import ResDWConv
    torch.manual_seed(0)
    m = ResDWConv(4).eval()
    x = torch.randn(1, 4, 6, 7)
    with torch.no_grad():
        m(x)  # fills the eager cache first
        traced = torch.jit.trace(m, x, check_trace=False)
        traced.to(torch.bfloat16)
        m.to(torch.bfloat16)
        out = traced(x.bfloat16())
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out, m(x.bfloat16()))


class _OwnForwardBN(torch.nn.BatchNorm2d):
    """A BatchNorm class with its own forward: its buffers are saved and
    restored."""

    def forward(self, x):
        return super().forward(x)


class _SyncBN(torch.nn.SyncBatchNorm):
    """SyncBatchNorm (which needs a GPU) with the plain forward: the
    recomputation keeps its counter and decrements it afterwards."""

    def forward(self, x):
        return torch.nn.BatchNorm2d.forward(self, x)

    def _check_input_dim(self, x):
        pass


@pytest.mark.parametrize('cls', [torch.nn.BatchNorm2d, _OwnForwardBN,
                                 _SyncBN])
@pytest.mark.parametrize('momentum', [0.1, None])
def test_keep_running_stats_leaves_buffers_and_settings(cls, momentum):
    from overlock.recompute import KeepRunningStats
    torch.manual_seed(0)
    bn = cls(3, momentum=momentum).train()
    bn(torch.randn(2, 3, 4, 5))  # running statistics away from 0 / 1
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    counter = bn.num_batches_tracked
    x = torch.randn(2, 3, 4, 5, requires_grad=True)
    # listed twice (a module and its parent): handled once
    with KeepRunningStats([torch.nn.Sequential(bn), bn]):
        out = bn(x)
    for k, v in bn.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert set(bn.state_dict()) == set(before)
    assert bn.momentum == momentum and bn.num_batches_tracked is counter
    # the same numbers as an ordinary training-mode forward
    torch.testing.assert_close(out, F.batch_norm(
        x, None, None, bn.weight, bn.bias, True, 0., bn.eps))
    bn(x)
    assert bn.num_batches_tracked.item() == before[
        'num_batches_tracked'].item() + 1


def test_recomputation_copies_no_buffers():
    """Selective recomputation adds no copy of the BatchNorm statistics
    (each a kernel launch on a GPU) to a training step."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self, buffers):
            super().__init__()
            self.ops = []
            self.buffers = buffers

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            # writes into a BatchNorm buffer, apart from the BatchNorm's own
            tensors = [t for a in args for t in (
                a if isinstance(a, (list, tuple)) else [a])
                if isinstance(t, torch.Tensor)]
            if func._schema.is_mutable and name != 'aten.native_batch_norm' \
                    and any(t.data_ptr() in self.buffers for t in tensors):
                name = 'buffer write'
            self.ops.append(name)
            return func(*args, **(kwargs or {}))

    counts = []
    for cp in (False, True):
        model = _tiny(selective_cp=cp).train()
        buffers = {b.data_ptr() for m in model.modules()
                   if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                   for b in m.buffers()}
        x = torch.randn(2, 3, 48, 48)
        with Count(buffers) as c:
            sum(o.mean() for o in model(x)).backward()
        counts.append({n: c.ops.count(n) for n in ('buffer write',
                                                   'aten.native_batch_norm')})
    plain, selective = counts
    # the same updates of the counters and stacked statistics, none more
    assert selective['buffer write'] == plain['buffer write'] > 0
    # the recomputed BatchNorms run again, and nothing else is added for them
    assert selective['aten.native_batch_norm'] > \
        plain['aten.native_batch_norm']


def test_no_pointwise_convolution_runs_twice():
    """The recomputed segments ending in a 1x1 convolution (``fc1``,
    ``fc2``, ``fusion.fc``, ``proj.conv``) stop their recomputation before
    it (its backward is run directly): a training step runs each pointwise
    convolution once, as without recomputation."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket is torch.ops.aten.convolution:
                x, w, groups = args[0], args[1], args[8]
                # not the squeeze-excitation's (on 1x1 pooled maps)
                if w.shape[-2:] == (1, 1) and groups == 1 and \
                        x.shape[-2:].numel() > 1:
                    self.n += 1
            return func(*args, **(kwargs or {}))

    counts = []
    for cp in (False, True):
        model = _tiny(selective_cp=cp).train()
        with Count() as c:
            sum(o.mean() for o in model(torch.randn(2, 3, 48, 48))).backward()
        counts.append(c.n)
    assert counts[0] == counts[1] > 0


@pytest.mark.parametrize('selective_cp', [True, False])
def test_grn_mlp_keeps_one_hidden_map(selective_cp):
    """With selective recomputation a block's GRN MLP keeps one map of its
    hidden width for the backward (``fc1``'s output, the recomputed
    segment's input), not also the input of ``fc2``."""
    from overlock.blocks import RepConvBlock
    torch.manual_seed(0)
    block = RepConvBlock(8, kernel_size=5, mlp_ratio=4,
                         selective_cp=selective_cp).train()
    kept = []

    def pack(t):
        kept.append(t)
        return t

    x = torch.randn(2, 8, 12, 12, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        block(x)
    hidden = {t.untyped_storage()._cdata for t in kept
              if t.dim() == 4 and t.shape[1] == 32 and t.shape[-1] == 12}
    assert len(hidden) == 1 if selective_cp else len(hidden) > 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
@pytest.mark.parametrize('dtype', [None, torch.float16, torch.bfloat16])
def test_fused_inference_on_cuda(plain_then_fused, monkeypatch, dtype):
    """On CUDA eval runs the generic fused flavour (float32, or autocast's
    dtype on cached cast weights) with the numbers of the plain path."""
    model = _tiny(seed=7).cuda()
    x = torch.randn(2, 3, 64, 80, device='cuda')
    # TF32 rounds folded and unfolded weights differently (~3e-4)
    monkeypatch.setattr(torch.backends.cudnn, 'allow_tf32', False)
    monkeypatch.setattr(torch.backends.cuda.matmul, 'allow_tf32', False)

    def run():
        with torch.autocast('cuda', dtype=dtype or torch.float32,
                            enabled=dtype is not None):
            return model(x)

    with torch.no_grad():
        plain, fused = plain_then_fused(run)
        ref = model(x)
    assert '_fused_cache' in model.sub_blocks3[0].__dict__
    for f, p, r in zip(fused, plain, ref):
        if dtype is None:
            _assert_rel(f, p)
        else:  # half precision: both paths against float32
            assert ((f.float() - r).norm() / r.norm()).item() < 0.03
            assert ((p.float() - r).norm() / r.norm()).item() < 0.03
