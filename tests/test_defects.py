"""Defects fixed with the layout rework (issue 8), one test each."""
import torch

import overlock
from conftest import TINY_ARCH, randomize_
from overlock import OverLoCK, checkpoint
from overlock.layers import DilatedReparamBlock
from overlock.model import DynamicConvBlock, RepConvBlock


def _tiny(**kw):
    return randomize_(OverLoCK(TINY_ARCH, **kw), seed=1).eval()


def _reparam_blocks(model):
    return [m for m in model.modules() if isinstance(m, DilatedReparamBlock)]


def test_fast_inference_off_stops_the_merged_kernel_cache():
    block = randomize_(DilatedReparamBlock(8, 13)).eval()
    x = torch.randn(1, 8, 20, 20)
    with overlock.options(fast_inference=False), torch.no_grad():
        branches = block(x)
    assert '_fused_cache' not in block.__dict__
    with torch.no_grad():
        merged = block(x)
    assert '_fused_cache' in block.__dict__
    torch.testing.assert_close(branches, merged, rtol=1e-4, atol=1e-5)
    # the whole model: no block fills a cache with the switch off
    model = _tiny()
    with overlock.options(fast_inference=False), torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert not any('_fused_cache' in m.__dict__ for m in model.modules())


def test_tracing_records_the_dilated_branches():
    """A traced graph holds the real parameters, not cached merged kernels
    (which would be baked in as constants)."""
    model = _tiny()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        for fast in (False, True):  # caches filled (or not) beforehand
            with overlock.options(fast_inference=fast):
                model(x)
                traced = torch.jit.trace(model, x, check_trace=False)
            graph = str(traced.inlined_graph)
            assert 'dil_conv_k' in graph and 'origin_bn' in graph, fast
    # the traced module follows weight changes like the model does
    with torch.no_grad():
        model.blocks1[0].proj[1].dil_conv_k5_1.weight.mul_(3)
        for a, b in zip(traced(x), model(x)):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _saved_bytes(module, *inputs):
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(*inputs)
    return total[0]


def test_selective_cp_is_a_constructor_argument():
    for cls in (RepConvBlock, DynamicConvBlock):
        assert 'selective_cp' not in vars(cls)
        assert not any('selective_cp' in vars(base) for base in cls.__mro__)
    blocks = {cp: RepConvBlock(16, 7, selective_cp=cp).train()
              for cp in (True, False)}
    assert blocks[True].selective_cp and not blocks[False].selective_cp
    dyn = DynamicConvBlock(32, 48, 7, selective_cp=False)
    assert dyn.selective_cp is False
    model = OverLoCK(TINY_ARCH, selective_cp=False)
    assert not any(getattr(m, 'selective_cp', False) for m in model.modules())
    # and it does what it says: fewer activations kept with recomputation
    x = torch.randn(2, 16, 24, 24, requires_grad=True)
    kept = {cp: _saved_bytes(block, x) for cp, block in blocks.items()}
    assert kept[True] < 0.8 * kept[False]


def test_random_init_runs_once(monkeypatch, tmp_path):
    from overlock_mm import OverLoCKBackbone
    calls = []
    original = OverLoCK.reset_parameters

    def counted(self):
        calls.append(type(self).__name__)
        original(self)

    monkeypatch.setattr(OverLoCK, 'reset_parameters', counted)
    OverLoCK(TINY_ARCH)
    assert calls == ['OverLoCK']
    calls.clear()
    m = OverLoCKBackbone(arch=TINY_ARCH)
    m.init_weights()  # what the runner does: no init_cfg, nothing more
    assert calls == ['OverLoCKBackbone']

    src = randomize_(OverLoCK(TINY_ARCH))
    path = tmp_path / 'w.pth'
    torch.save({'state_dict': src.state_dict()}, path)
    calls.clear()
    p = OverLoCKBackbone(arch=TINY_ARCH, init_cfg=dict(
        type='Pretrained', checkpoint=str(path)))
    p.init_weights()
    assert calls == ['OverLoCKBackbone']  # the constructor's; load only then
    for k, v in src.state_dict().items():
        assert torch.equal(p.state_dict()[k], v), k


def test_pretrained_reads_and_unwraps_once(monkeypatch, tmp_path):
    from overlock_mm import OverLoCKBackbone
    counts = dict(read=0, unwrap=0)
    read, unwrap = checkpoint.safe_load, checkpoint._unwrap

    def counting_read(*a, **k):
        counts['read'] += 1
        return read(*a, **k)

    def counting_unwrap(*a, **k):
        counts['unwrap'] += 1
        return unwrap(*a, **k)

    monkeypatch.setattr(checkpoint, 'safe_load', counting_read)
    monkeypatch.setattr(checkpoint, '_unwrap', counting_unwrap)
    src = randomize_(OverLoCK(TINY_ARCH))
    path = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.' + k: v
                               for k, v in src.state_dict().items()}}, path)
    m = OverLoCKBackbone(arch=TINY_ARCH, init_cfg=dict(
        type='Pretrained', checkpoint=str(path), prefix='backbone'))
    m.init_weights()
    assert counts == dict(read=1, unwrap=1)
    for k, v in src.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
