"""The OverLoCK module: arguments, errors, freezing, checkpointing, timm."""
import copy

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from conftest import TINY_ARCH, randomize_
from overlock import ARCH_SETTINGS, OverLoCK


def _meta(**kw):
    with torch.device('meta'):
        return OverLoCK(**kw)


@pytest.mark.parametrize('arch,channels', [
    ('xt', (56, 112, 340, 420)), ('t', (64, 128, 384, 640)),
    ('s', (64, 128, 448, 640)), ('b', (80, 160, 528, 720))])
def test_channels_and_strides(arch, channels):
    m = _meta(arch=arch)
    assert m.channels == channels and m.strides == (4, 8, 16, 32)
    assert [f['num_chs'] for f in m.feature_info] == list(channels)
    assert [f['reduction'] for f in m.feature_info] == [4, 8, 16, 32]
    assert _meta(arch=arch, out_indices=(1, 3)).out_channels == \
        (channels[1], channels[3])


@pytest.mark.parametrize('size', [(64, 64), (75, 101), (33, 47)])
def test_output_shapes_odd_and_small_inputs(size):
    model = OverLoCK(TINY_ARCH).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    h, w = size
    for out, c, s in zip(outs, model.channels, model.strides):
        assert out.shape[1] == c
        assert out.shape[2] == -(-h // s) and out.shape[3] == -(-w // s)


def test_out_indices_subset_is_same_numbers():
    model = randomize_(OverLoCK(TINY_ARCH)).eval()
    sub = OverLoCK(TINY_ARCH, out_indices=(1, 2)).eval()
    sub.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        full, part = model(x), sub(x)
    assert len(part) == 2
    torch.testing.assert_close(part[0], full[1])
    torch.testing.assert_close(part[1], full[2])


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match=r"\['b', 's', 't', 'xt'\]"):
        OverLoCK('huge')


def test_arch_dict_errors():
    bad = dict(TINY_ARCH)
    del bad['sub_num_heads']
    with pytest.raises(ValueError, match="lacks the fields.*sub_num_heads"):
        OverLoCK(bad)
    bad = dict(TINY_ARCH, embed_dims=[16, 24, 30, 48])
    with pytest.raises(ValueError, match='divisible by 4 x sub_num_heads'):
        OverLoCK(bad)
    with pytest.raises(ValueError, match='list of 4'):
        OverLoCK(dict(TINY_ARCH, depths=[1, 1, 1]))
    with pytest.raises(ValueError, match='kernel_sizes must be in'):
        OverLoCK(dict(TINY_ARCH, kernel_sizes=[7, 7, 7, 4]))
    with pytest.raises(ValueError, match='Unknown fields'):
        OverLoCK(dict(TINY_ARCH, depth=[1, 1, 1, 1]))
    with pytest.raises(TypeError, match='name or a dict'):
        OverLoCK(3)
    for field, value, match in (
            ('depths', ['1', 1, 1, 1], 'must be a list of positive ints'),
            ('embed_dims', [16., 24, 32, 48], 'must be a list of positive '
             'ints'),
            ('mlp_ratios', [0, 2, 2, 2], 'must be a list of positive numbers'),
            ('smk_size', '5', 'must be an int'),
            ('res_scale', 'no', 'must be True or False')):
        with pytest.raises(ValueError, match=f"'{field}' {match}"):
            OverLoCK(dict(TINY_ARCH, **{field: value}))
    OverLoCK(dict(TINY_ARCH, mlp_ratios=[2.5, 2, 2, 2]))  # ratios: numbers


def test_arch_name_and_dict_agree():
    a = _meta(arch='t')
    b = _meta(arch=copy.deepcopy(ARCH_SETTINGS['t']))
    assert [(k, v.shape) for k, v in a.state_dict().items()] == \
        [(k, v.shape) for k, v in b.state_dict().items()]


def test_bad_inputs():
    model = OverLoCK(TINY_ARCH)
    with pytest.raises(ValueError, match='4-D'):
        model(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match='built for 3 input channels but got 1'):
        model(torch.zeros(1, 1, 64, 64))
    with pytest.raises(TypeError, match=r'torch.from_numpy\(x\)'):
        model(torch.zeros(1, 3, 64, 64).numpy())
    with pytest.raises(TypeError, match=r'floating-point images, got '
                       r'torch.uint8; .* x.float\(\) / 255'):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match='empty batch'):
        model(torch.zeros(0, 3, 64, 64))
    with pytest.raises(TypeError, match=r'torch.float64 input but its weights '
                       r'are torch.float32: .*model.to\(torch.float64\)'):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    with torch.autocast('cpu', dtype=torch.bfloat16):  # autocast casts
        model.eval()(torch.zeros(1, 3, 64, 64, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match='Train with a batch of 2 or more'):
        model.train()(torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize('kw,match', [
    (dict(out_indices=(0, 4)), 'out_indices'),
    (dict(out_indices=()), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(frozen_stages=-2), 'frozen_stages'),
    (dict(num_classes=-5), 'num_classes must be an int >= 0'),
    (dict(in_channels=3.0), 'in_channels must be an int >= 1'),
    (dict(drop_path_rate=2.0), r'drop_path_rate must be in \[0, 1\)'),
    (dict(num_classes=10, out_indices=(0, 1)), 'a classifier returns logits'),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        OverLoCK(TINY_ARCH, **kw)


def _check_norm_state(modules, train_state):
    return all(m.training == train_state for m in modules
               if isinstance(m, _BatchNorm))


@pytest.mark.parametrize('frozen', [0, 1, 2, 3, 4])
def test_frozen_stages(frozen):
    model = OverLoCK(TINY_ARCH, frozen_stages=frozen)
    model.train()
    for stage in range(5):
        mods = model.stage_modules(stage)
        params = [p for m in mods for p in m.parameters()]
        assert params
        if stage <= frozen:
            assert all(not p.requires_grad for p in params)
            assert all(not m.training for mod in mods for m in mod.modules())
        else:
            assert all(p.requires_grad for p in params)
            assert all(m.training for mod in mods for m in mod.modules())
    # every parameter belongs to exactly one stage
    owned = [id(p) for s in range(5) for m in model.stage_modules(s)
             for p in m.parameters()]
    assert sorted(owned) == sorted(id(p) for p in model.parameters())


def test_norm_eval():
    model = OverLoCK(TINY_ARCH, norm_eval=True)
    model.train()
    assert _check_norm_state(model.modules(), False)
    assert model.blocks1[0].training
    model = OverLoCK(TINY_ARCH, norm_eval=False).train()
    assert _check_norm_state(model.modules(), True)


def test_with_cp_same_outputs_and_gradients():
    torch.manual_seed(0)
    ref = randomize_(OverLoCK(TINY_ARCH))
    cp = OverLoCK(TINY_ARCH, with_cp=True)
    cp.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, 64, 64)
    results = []
    for m in (ref, cp):
        m.train()
        xi = x.clone().requires_grad_(True)
        sum(o.square().mean() for o in m(xi)).backward()
        results.append((xi.grad, m.sub_blocks3[0].rpb2.grad,
                        m.blocks1[0].dwconv.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_drop_path_rate_spreads_linearly():
    model = OverLoCK(TINY_ARCH, drop_path_rate=0.3)
    assert model.blocks1[0].proj[-1].__class__.__name__ == 'Identity'
    assert abs(model.sub_blocks4[-1].drop_path.drop_prob - 0.3) < 1e-6


def test_classifier_forward():
    model = OverLoCK(TINY_ARCH, num_classes=10)
    assert not hasattr(model, 'extra_norm') and hasattr(model, 'aux_head')
    x = torch.randn(2, 3, 64, 64)
    model.train()
    main, aux = model(x)
    assert main.shape == aux.shape == (2, 10)
    model.eval()
    assert model(x).shape == (2, 10)


def test_timm_registration():
    timm = pytest.importorskip('timm')
    names = timm.list_models('overlock*')
    for arch in ('xt', 't', 's', 'b'):
        assert f'overlock_{arch}' in names
        assert f'overlock_{arch}_reparam' in names
    model = timm.create_model('overlock_xt', features_only=True)
    assert model.num_classes == 0 and len(model.feature_info) == 4
    assert model.pretrained_cfg['url'].endswith('overlock_xt_in1k_224.pth')
    outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [56, 112, 340, 420]
    clf = timm.create_model('overlock_xt_reparam', num_classes=5)
    assert clf.deploy and clf.pretrained_cfg['url'].endswith('_reparam.pth')
    assert clf.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_timm_pretrained_from_a_local_file(tmp_path):
    """``pretrained_cfg_overlay=dict(file=...)`` loads a local copy (no
    network); another ``num_classes`` keeps the body and gets a fresh
    classifier, as timm does; a missing file and ``in_chans`` other than 3
    are named."""
    timm = pytest.importorskip('timm')
    from overlock.checkpoint import CheckpointError
    torch.manual_seed(0)
    release = OverLoCK('xt', num_classes=1000)
    path = tmp_path / 'overlock_xt_in1k_224.pth'
    torch.save({'model': release.state_dict()}, path)
    local = dict(file=str(path))
    same = timm.create_model('overlock_xt', pretrained=True,
                             pretrained_cfg_overlay=local)
    for k, v in release.state_dict().items():
        assert torch.equal(same.state_dict()[k], v), k
    assert same.pretrained_cfg['file'] == str(path)
    ten = timm.create_model('overlock_xt', pretrained=True, num_classes=10,
                            pretrained_cfg_overlay=local)
    assert ten.head[4].weight.shape[0] == 10
    assert torch.equal(ten.patch_embed1[0].weight,
                       release.patch_embed1[0].weight)
    with pytest.raises(CheckpointError, match='not found: /nonexistent.pth'):
        timm.create_model('overlock_xt', pretrained=True,
                          pretrained_cfg_overlay=dict(file='/nonexistent.pth'))
    with pytest.raises(ValueError, match='take 3 input channels, not '
                       'in_chans=1'):
        timm.create_model('overlock_xt', pretrained=True, in_chans=1,
                          pretrained_cfg_overlay=local)


def test_cached_constants_are_not_inference_tensors():
    """Constants cached by size (bias index, one-hot maps, identity tap)
    are normal tensors even when first built under torch.inference_mode,
    so a later backward may save them."""
    from overlock import reparam
    from overlock.ops import contmix
    cpu = torch.device('cpu')
    for fn in (contmix.bias_index, contmix._bias_one_hot,
               reparam._centre_tap):
        fn.cache_clear()
    with torch.inference_mode():
        made = [contmix.bias_index(7, 8, 5, cpu),
                contmix._bias_one_hot(7, 5, cpu),
                reparam._centre_tap((4, 1, 3, 3), torch.float32, cpu)]
    assert not any(t.is_inference() for t in made)


def test_train_after_inference_mode_eval_at_the_same_size():
    """Reference mode (the gather saves its index for the backward): a
    training step after an inference_mode evaluation at the same map size
    failed with 'Inference tensors cannot be saved for backward'."""
    import overlock
    from overlock.ops import contmix
    reference = True
    contmix.bias_index.cache_clear()
    torch.manual_seed(0)
    model = OverLoCK(TINY_ARCH).eval()
    x = torch.randn(1, 3, 64, 64)
    with overlock.options(reference=reference):
        with torch.inference_mode():
            model(x)
        model.train()
        sum(o.sum() for o in model(x)).backward()
    assert all(p.grad is not None for n, p in model.named_parameters()
               if 'rpb' in n)
