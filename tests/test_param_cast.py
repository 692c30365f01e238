"""One cast of each block's convolution parameters under autocast
(:mod:`overlock.param_cast`): the same numbers as autocast's per-call
casts, bit for bit, and none of those casts left."""
import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import TINY_ARCH, randomize_
from overlock import OverLoCK, param_cast
from overlock.blocks import DynamicConvBlock, RepConvBlock
from overlock.config import options


def _model(**kwargs):
    torch.manual_seed(0)
    model = OverLoCK(TINY_ARCH, fuse_overview=True, **kwargs)
    return randomize_(model).train()


def _step(model, x, dtype=torch.bfloat16, hooks=None):
    """Outputs, parameter gradients, input gradient and buffers of one
    training step of a copy of ``model`` under CPU autocast."""
    model = copy.deepcopy(model)
    x = x.clone().requires_grad_()
    torch.manual_seed(1)  # DropPath
    with (hooks or torch.autograd.graph.saved_tensors_hooks(
            lambda t: t, lambda t: t)):
        with torch.autocast('cpu', dtype=dtype):
            outs = model(x)
            loss = sum((o.float() ** 2).mean() for o in outs)
        loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return [o.detach() for o in outs], grads, x.grad, buffers, model


def _without_cast(monkeypatch):
    monkeypatch.setattr(param_cast, 'cast_block_params', lambda b, x: None)


def _assert_same(a, b):
    for o, r in zip(a[0], b[0]):
        assert o.dtype == r.dtype
        assert torch.equal(o, r)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        ga, gb = a[1][name], b[1][name]
        assert (ga is None) == (gb is None), name
        if ga is not None:
            assert ga.dtype == gb.dtype == torch.float32, name
            assert torch.equal(ga, gb), name
    assert torch.equal(a[2], b[2])
    for name in a[3]:
        assert torch.equal(a[3][name], b[3][name]), name


@pytest.mark.parametrize('recompute', ['selective', 'whole', 'none'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_same_numbers_as_autocast(monkeypatch, recompute, dtype):
    """Outputs, every gradient and the BatchNorm statistics equal bit for
    bit those of autocast's own casts, with the selective recomputation,
    whole-block checkpointing (``with_cp``) and none."""
    model = _model(with_cp=recompute == 'whole',
                   selective_cp=recompute != 'none')
    x = torch.randn(2, 3, 64, 64)
    cast = _step(model, x, dtype)
    with monkeypatch.context() as m:
        _without_cast(m)
        ref = _step(model, x, dtype)
    _assert_same(cast, ref)


class _ParamCasts(TorchDispatchMode):
    """Casts whose input is one of ``params`` (by identity), and all
    operations but views (on a GPU each a kernel launch)."""

    def __init__(self, params):
        super().__init__()
        self.ids = {id(p) for p in params}
        self.casts = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += not func.is_view
        if func.overloadpacket is torch.ops.aten._to_copy and \
                id(args[0]) in self.ids:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def _block_conv_params(model):
    return [p for blk in model.modules()
            if isinstance(blk, (RepConvBlock, DynamicConvBlock))
            for m in blk.modules() if isinstance(m, nn.Conv2d)
            for p in m.parameters(recurse=False)]


def _count(model, x):
    params = _block_conv_params(model)
    with _ParamCasts(params) as mode:
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outs = model(x)
            loss = sum(o.float().mean() for o in outs)
        loss.backward()
    return mode


def test_parameter_casts_gone(monkeypatch):
    """No convolution parameter of a block is cast on its own any more (in
    the forward, the recomputation or the backward), and the step has
    fewer operations."""
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    _count(model, x)  # first calls: timed plans, cached constants
    model.zero_grad(set_to_none=True)
    cast = _count(model, x)
    with monkeypatch.context() as m:
        _without_cast(m)
        model.zero_grad(set_to_none=True)
        ref = _count(model, x)
    # autocast casts each parameter per call (forward and recomputation;
    # their gradients are cast too, but those are not parameters)
    assert ref.casts > 150
    assert cast.casts == 0
    # 2,893 -> 2,528 operations (views not counted)
    assert cast.ops < ref.ops - 300


def test_modules_get_their_parameters_back():
    """After a step, and after a forward that raises inside a block, every
    module holds its own parameters again."""
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    params = dict(model.named_parameters())
    _, grads, _, _, trained = _step(model, x)
    assert all(g is not None for g in grads.values())

    def check(m):
        for name, p in m.named_parameters():
            assert type(p) is nn.Parameter and p.dtype == torch.float32, name
            assert torch.equal(p, params[name]), name
        for mod in m.modules():
            assert 'fused_weight' not in mod.__dict__
        assert param_cast.active() is None

    check(trained)

    block = next(m for m in model.modules() if isinstance(m, DynamicConvBlock))

    def fail(module, args):
        raise RuntimeError('stop')

    handle = block.gate[0].register_forward_pre_hook(fail)
    with pytest.raises(RuntimeError, match='stop'):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            model(x)
    handle.remove()
    check(model)


def test_what_a_block_reads_inside():
    """Inside a block's forward the convolutions read half copies (a
    ResDWConv its fused kernel); ``weight_proj``, read as a tensor by the
    float32 logits, keeps its parameter."""
    model = _model()
    block = next(m for m in model.modules() if isinstance(m, DynamicConvBlock))
    seen = {}

    def record(module, args):
        seen['gate'] = block.gate[0].weight
        seen['proj'] = block.weight_proj.weight
        seen['dw'] = block.dwconv1.fused_weight()
        seen['lent'] = 'fused_weight' in block.dwconv1.__dict__

    block.gate[0].register_forward_pre_hook(record)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        model(torch.randn(2, 3, 64, 64))
    assert seen['gate'].dtype == torch.bfloat16
    assert type(seen['proj']) is nn.Parameter
    assert seen['proj'].dtype == torch.float32
    assert seen['lent']
    fused = block.dwconv1.fused_weight()  # outside: float32, identity added
    assert fused.dtype == torch.float32
    assert torch.equal(seen['dw'], fused.to(torch.bfloat16))


def test_when_it_applies():
    """Only under autocast with a half dtype, with grad, outside the
    reference mode, for float32 parameters that require grad."""
    model = _model()
    block = next(m for m in model.modules() if isinstance(m, RepConvBlock))
    x = torch.randn(2, block.dwconv.in_channels, 8, 8)
    assert param_cast.cast_block_params(block, x) is None  # no autocast
    with torch.autocast('cpu', dtype=torch.bfloat16):
        cast = param_cast.cast_block_params(block, x)
        assert cast is not None
        assert all(t.dtype == torch.bfloat16 for t in cast.tensors())
        n_params = sum(1 for m in block.modules() if isinstance(m, nn.Conv2d)
                       for p in m.parameters(recurse=False))
        assert len(cast.tensors()) == n_params
        with torch.no_grad():
            assert param_cast.cast_block_params(block, x) is None
        assert param_cast.cast_block_params(block, x.double()) is None
        with options(reference=True):
            assert param_cast.cast_block_params(block, x) is None
        for p in block.parameters():
            p.requires_grad_(False)
        assert param_cast.cast_block_params(block, x) is None


def test_frozen_parameters(monkeypatch):
    """Frozen stages and a frozen convolution inside a trained block: the
    same numbers, no gradient for what is frozen."""
    model = _model(frozen_stages=1)
    block = next(m for m in model.modules() if isinstance(m, DynamicConvBlock))
    block.gate[0].weight.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    cast = _step(model, x)
    with monkeypatch.context() as m:
        _without_cast(m)
        ref = _step(model, x)
    _assert_same(cast, ref)
    assert cast[1]['patch_embed1.0.weight'] is None
    name = next(n for n, p in model.named_parameters()
                if p is block.gate[0].weight)
    assert cast[1][name] is None


def test_saved_tensor_hooks(monkeypatch):
    """With ``save_on_cpu``-style copying hooks the recomputation still
    finds the half copies it was given."""
    model = _model()
    x = torch.randn(2, 3, 64, 64)

    def hooks():
        return torch.autograd.graph.saved_tensors_hooks(
            lambda t: t.clone(), lambda t: t)

    cast = _step(model, x, hooks=hooks())
    with monkeypatch.context() as m:
        _without_cast(m)
        ref = _step(model, x, hooks=hooks())
    _assert_same(cast, ref)


def test_distributed_data_parallel(tmp_path, monkeypatch):
    """DDP (gloo, one process): two steps under autocast, the same
    gradients as without the cast (DDP's hooks see every parameter)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store',
                            rank=0, world_size=1)
    try:
        def run():
            torch.manual_seed(0)
            ddp = DistributedDataParallel(_model())
            grads = []
            for step in range(2):
                x = torch.randn(2, 3, 64, 64,
                                generator=torch.Generator().manual_seed(step))
                ddp.zero_grad(set_to_none=True)
                with torch.autocast('cpu', dtype=torch.bfloat16):
                    loss = sum(o.float().mean() for o in ddp(x))
                loss.backward()
                grads.append([p.grad.clone() for p in ddp.parameters()])
            return grads

        cast = run()
        with monkeypatch.context() as m:
            _without_cast(m)
            ref = run()
    finally:
        dist.destroy_process_group()
    for a, b in zip(cast, ref):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
