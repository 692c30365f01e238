"""The CUDA path without a GPU: the backbone's forward on fake CUDA tensors
(``tools/analysis/fake_cuda.py``: FakeTensorMode, CUDA autocast's real cast
lists), checking what a GPU would be asked to do: NCHW depthwise
convolutions, the Triton ContMix op, no host tensors or value reads (which
would also break CUDA-graph capture), half-precision LayerNorms under
autocast. The numbers themselves are checked on CPU elsewhere."""
import os.path as osp
import sys
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import overlock
from conftest import ROOT, TINY_ARCH
from overlock import OverLoCK
from overlock.layers import LayerNorm2d

sys.path.insert(0, osp.join(ROOT, 'tools', 'analysis'))
from fake_cuda import FakeCuda  # noqa: E402

DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}
# stage maps 48x56 ... 6x7: every ContMix runs at its own size
SIZE = (192, 224)


class Record(TorchDispatchMode):
    """Every operation with its tensor arguments."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if not name.startswith('prim.'):
            self.calls.append((name, func, args, kwargs))
        return func(*args, **kwargs)

    def named(self, name):
        return [c for c in self.calls if c[0] == name]


def _tensors(args, kwargs):
    return [a for a in tree_leaves((args, kwargs))
            if isinstance(a, torch.Tensor)]


@pytest.fixture
def quiet():
    # the folded-weight cache keys on data pointers (fake: 0, warned);
    # torch.autocast(enabled=False) warns that this machine has no CUDA
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', 'Accessing the data pointer')
        warnings.filterwarnings('ignore', 'CUDA is not available')
        yield


def _forward(train, dtype, kernels='auto'):
    """The second forward (caches warm) of the tiny backbone on fake CUDA
    tensors: ``(outputs, Record)``."""
    pytest.importorskip('triton')
    torch.manual_seed(0)
    fake = FakeCuda()
    model = fake.module(OverLoCK(TINY_ARCH, fuse_overview=True)).train(train)
    x = fake.randn(1, 3, *SIZE)
    with overlock.options(kernels=kernels), fake, \
            fake.autocast(DTYPES[dtype]), torch.set_grad_enabled(train):
        model(x)
        with Record() as rec:
            outs = model(x)
    return outs, rec


@pytest.mark.parametrize('dtype', list(DTYPES))
@pytest.mark.parametrize('train', [True, False], ids=['train', 'eval'])
def test_cuda_forward_dispatch(train, dtype, quiet):
    outs, rec = _forward(train, dtype)
    channels = OverLoCK(TINY_ARCH, fuse_overview=True).out_channels
    assert [tuple(o.shape) for o in outs] == [
        (1, d, SIZE[0] // s, SIZE[1] // s)
        for d, s in zip(channels, (4, 8, 16, 32))]
    assert all(o.is_cuda for o in outs)
    if dtype == 'fp32':
        assert all(o.dtype == torch.float32 for o in outs)

    # nothing on the host: no CPU tensor (but 0-dim scalars) and no read of
    # a value (fake tensors raise on those; a CUDA graph could not capture
    # either)
    for name, _, args, kwargs in rec.calls:
        for t in _tensors(args, kwargs):
            assert t.is_cuda or t.dim() == 0, (name, t.device, t.shape)
    assert not rec.named('aten._local_scalar_dense')

    # depthwise convolutions NCHW: cuDNN's channels-last depthwise kernels
    # are ~9x slower (the CPU's layout choices must not leak here)
    depthwise = [c for c in rec.named('aten.convolution')
                 if c[2][0].shape[1] == c[2][1].shape[0] > 1
                 and c[2][1].shape[1] == 1 and c[2][-1] == c[2][0].shape[1]]
    assert len(depthwise) > 10
    for _, _, (x, w, *_), _ in depthwise:
        assert x.is_contiguous() and w.is_contiguous(), (x.shape, w.shape)

    # the ContMix aggregation: the Triton op, two kernels per Focus block
    blocks = sum(TINY_ARCH['sub_depths'])
    assert len(rec.named('overlock.contmix_aggregate')) == 2 * blocks


@pytest.mark.parametrize('dtype', ['fp16', 'bf16'])
def test_block_parameters_cast_once_under_cuda_autocast(dtype, quiet):
    """Under CUDA autocast a training forward casts no convolution
    parameter of a block on its own: one concatenation and one cast per
    block (``overlock/param_cast.py``). Without it the depthwise
    convolutions cast their weights on every call (24 casts in this
    forward; autocast's cache, which lives as long as the autocast region,
    spared the 1x1 convolutions of this second forward)."""
    _, rec = _forward(True, dtype)
    blocks = sum(TINY_ARCH['depths']) + sum(TINY_ARCH['sub_depths'])
    casts = rec.named('aten._to_copy')
    flat = [c for c in casts if c[2][0].dim() == 1 and
            c[3].get('dtype') == DTYPES[dtype] and c[2][0].numel() > 1000]
    assert len(flat) == blocks
    # (activations have batch 1 here)
    assert not [c for c in casts if c[2][0].dim() == 4 and
                c[2][0].shape[0] != 1]


@pytest.mark.parametrize('kernels', ['auto', 'triton', 'torch'])
def test_kernel_choice_for_cuda_tensors(kernels):
    """Inside the ContMix op (whose fake kernel the forward above ran): the
    Triton kernels for CUDA tensors unless ``kernels='torch'``."""
    pytest.importorskip('triton')
    from overlock.ops.accelerators import triton_kernels
    from overlock.ops.triton_contmix import forward
    fake = FakeCuda()
    with fake:
        x = torch.empty(1, 2, 8, 8, device='cuda')
    with overlock.options(kernels=kernels):
        contmix = triton_kernels(x)
    assert (contmix is not None) == (kernels != 'torch')
    if contmix is not None:
        assert contmix.forward is forward


def test_triton_depthwise_kernels_on_cuda(quiet):
    """``kernels='triton'``: the depthwise convolutions through the Triton
    op, NCHW."""
    _, rec = _forward(True, 'fp16', kernels='triton')
    ops = rec.named('overlock.depthwise_conv2d')
    assert len(ops) > 10
    for _, _, (x, w, *_), _ in ops:
        assert x.is_contiguous() and x.dtype == w.dtype == torch.float16


def _half_forward(fake, module):
    """``module`` on a fake half CUDA map under CUDA fp16 autocast:
    ``(input, output, Record, tensors kept for the backward)``."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with fake, fake.autocast(torch.float16):
        x = fake.randn(2, 8, 6, 7).half().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                Record() as rec:
            out = module(x)
    return x, out, rec, saved


def test_layer_norm_half_under_cuda_autocast(quiet):
    """CUDA autocast would normalise a float32 copy of a half map, keep it
    for the backward and return float32; LayerNorm2d normalises the half
    map (float32 statistics inside the kernel) and keeps no float32 map."""
    fake = FakeCuda()
    norm = fake.module(LayerNorm2d(8))
    x, out, rec, saved = _half_forward(fake, norm)
    assert out.dtype == torch.float16 and out.is_contiguous()
    casts = rec.named('aten._to_copy')
    # only the parameters are cast (8 values each), never the map
    assert len(casts) == 2 and all(c[2][0].numel() == 8 for c in casts)
    assert not [t for t in saved if t.dtype == torch.float32 and
                t.numel() == x.numel()]

    # float32 maps, and no autocast: float32 as before
    with fake:
        y = fake.randn(2, 8, 6, 7)
        assert norm(y).dtype == torch.float32
        with fake.autocast(torch.float16):
            assert norm(y).dtype == torch.float32


def test_layer_scale_casts_no_map_under_cuda_autocast(quiet):
    """CUDA autocast promotes ``addcmul``'s half map to a float32 copy and
    keeps that; LayerScale reads the half map as it is (same float32
    result, see ``tests/test_amp.py``)."""
    from overlock.layers import LayerScale
    fake = FakeCuda()
    ls = fake.module(LayerScale(8, 1.))
    x, out, rec, saved = _half_forward(fake, ls)
    with fake, fake.autocast(torch.float16):
        # what autocast alone does
        with Record() as plain:
            torch.addcmul(ls.bias.view(1, -1, 1, 1), x,
                          ls.weight.view(1, -1, 1, 1))
    assert out.dtype == torch.float32
    assert not rec.named('aten._to_copy')
    assert [c[2][0].shape for c in plain.named('aten._to_copy')] == [x.shape]
    assert [t.dtype for t in saved if t.shape == x.shape] == [torch.float16]


def test_dilated_block_sums_in_half_under_cuda_autocast(quiet):
    """The dilated re-param block's stacked branches are summed in their
    half dtype, as the per-branch chain of additions does (CUDA autocast
    would sum a float32 copy of all of them)."""
    from overlock.layers import DilatedReparamBlock
    fake = FakeCuda()
    block = fake.module(DilatedReparamBlock(8, 7)).train()
    with fake, fake.autocast(torch.float16):
        x = fake.randn(2, 8, 12, 12).half().requires_grad_()
        with Record() as rec:
            out = block(x)
        with overlock.options(reference=True):
            chained = block(x)
    assert out.dtype == chained.dtype == torch.float16
    assert rec.named('aten.sum')
    # only parameters are cast, never a map
    for _, _, (t, *_), _ in rec.named('aten._to_copy'):
        assert t.shape[0] == 8 and t[0].numel() <= 7 * 7, t.shape


def test_fake_cuda_leaves_no_cached_constants(quiet):
    """The constant tensors OverLoCK caches per device (here fake
    ``cuda:0`` ones) are dropped when the fake mode is left: real CUDA
    tensors of a later test in the process must not meet them."""
    from overlock.ops.caching import _CACHES
    from overlock.ops.contmix import bias_index
    fake = FakeCuda()
    model = fake.module(OverLoCK(TINY_ARCH, fuse_overview=True)).train()
    with fake:
        model(fake.randn(1, 3, *SIZE))
        assert bias_index.cache_info().currsize > 0
    assert all(c.cache_info().currsize == 0 for c in _CACHES)


def test_fake_cuda_autocast_restores_state():
    fake = FakeCuda()
    assert not torch.is_autocast_enabled('cuda')
    with fake.autocast(torch.bfloat16):
        assert torch.is_autocast_enabled('cuda')
        assert torch.get_autocast_dtype('cuda') == torch.bfloat16
    assert not torch.is_autocast_enabled('cuda')
    with fake.autocast(None):
        assert not torch.is_autocast_enabled('cuda')
