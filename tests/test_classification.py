"""The mmpretrain classifier: official numbers, checkpoint keys, the
auxiliary loss, the recipes of configs/overlock_*_8xb256_in1k.py, --eval."""
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import (ROOT, load_manifest, load_reference, reference_error,
                      upstream_to_arch)

pytest.importorskip('mmpretrain')
import mmpretrain_overlock  # noqa: E402,F401
from mmengine.config import Config  # noqa: E402
from mmpretrain.registry import MODELS  # noqa: E402
from mmpretrain.structures import DataSample  # noqa: E402

from mmpretrain_overlock import OverLoCKClassifier  # noqa: E402
from overlock_mm.runtime import apply_eval_metrics  # noqa: E402
from test_reference import _assert_rel_below  # noqa: E402

ARCHS = ('xt', 't', 's', 'b')
EVAL_INPUTS = [(2, 3, 224, 224), (1, 3, 160, 192), (1, 3, 64, 64)]


def _reference_model(data, **kwargs):
    args = data['upstream_args']
    model = MODELS.build(dict(
        type='OverLoCKClassifier', arch=upstream_to_arch(args),
        num_classes=args['num_classes'], projection=args['projection'],
        **kwargs))
    model.load_state_dict(data['state_dict'], strict=True)
    return model


@pytest.fixture(scope='module')
def reference():
    return load_reference('classification')


def test_eval_logits_match_upstream(reference):
    model = _reference_model(reference).eval()
    assert [tuple(c['input'].shape) for c in reference['eval_cases']] == \
        EVAL_INPUTS
    with torch.no_grad():
        for case in reference['eval_cases']:
            ref = case['logits']
            out = model(case['input'])  # mode='tensor'
            assert out.shape == ref.shape
            torch.testing.assert_close(
                out, ref, rtol=0, atol=1e-4 - reference_error(ref))
            # predict(): softmax of the same logits
            preds = model(case['input'], mode='predict')
            scores = torch.stack([p.pred_score for p in preds])
            torch.testing.assert_close(scores, F.softmax(out, dim=1))


def test_train_logits_and_gradients_match_upstream(reference):
    model = _reference_model(reference).train()
    case = reference['train_case']
    x = case['input'].clone().requires_grad_(True)
    main, aux = model(x)
    ((main * case['proj_main']).sum() + (aux * case['proj_aux']).sum()) \
        .backward()
    _assert_rel_below(main.detach(), case['main'], 1e-4, 'main')
    _assert_rel_below(aux.detach(), case['aux'], 1e-4, 'aux')
    _assert_rel_below(x.grad, case['grad_input'], 1e-4, 'grad_input')
    params = dict(model.named_parameters())
    refs = case['grad_params']
    assert len(refs) == 83
    assert {k.split('.')[0] for k in refs} == {
        'head', 'aux_head', 'sub_blocks4', 'patch_embed1'}
    scale = max(g.abs().max().item() - reference_error(g)
                for g in refs.values())
    for name, ref in refs.items():
        grad = params[name].grad
        assert grad is not None, name
        if ref.abs().max() > 1e-3 * scale:
            _assert_rel_below(grad, ref, 1e-4, name)
        else:  # structurally zero (a bias before a train-mode BatchNorm)
            assert (grad - ref).abs().max() < \
                1e-4 * scale - reference_error(ref), name


@pytest.mark.parametrize('arch', ARCHS)
@pytest.mark.parametrize('deploy', [False, True])
def test_keys_are_the_official_checkpoints(arch, deploy):
    """Every parameter and buffer name and shape of the official ImageNet
    checkpoints, plain and _reparam: nothing more (the data preprocessor
    and the ClsHead hold no state)."""
    form = 'classification_deploy' if deploy else 'classification'
    with torch.device('meta'):
        model = OverLoCKClassifier(arch=arch, deploy=deploy)
    assert [[k, list(v.shape)] for k, v in model.state_dict().items()] == \
        load_manifest()[form][arch]


def test_loss_is_main_plus_0_4_aux_on_soft_targets(reference):
    """Upstream train.py: loss_fn(main, y) + 0.4 * loss_fn(aux, y), with
    SoftTargetCrossEntropy on timm's mixed, 0.1-smoothed targets."""
    model = _reference_model(
        reference, cls_head=dict(
            type='ClsHead', loss=dict(type='LabelSmoothLoss',
                                      label_smooth_val=0.1,
                                      mode='original'))).train()
    x = reference['eval_cases'][2]['input'].repeat(2, 1, 1, 1)
    lam = 0.7
    y1 = F.one_hot(torch.tensor([2, 5]), 10).float()
    mixed = lam * y1 + (1 - lam) * y1.flip(0)
    samples = [DataSample().set_gt_label(2).set_gt_score(mixed[0]),
               DataSample().set_gt_label(5).set_gt_score(mixed[1])]
    torch.manual_seed(0)
    losses = model(x, samples, mode='loss')
    torch.manual_seed(0)
    main, aux = model(x)
    # timm: mixup_target(label_smoothing=0.1) = lam * smooth(y1) + ...
    target = mixed * 0.9 + 0.1 / 10

    def soft_ce(logits):
        return (-target * F.log_softmax(logits, dim=1)).sum(1).mean()

    assert set(losses) == {'loss', 'loss_aux'}
    torch.testing.assert_close(losses['loss'], soft_ce(main))
    torch.testing.assert_close(losses['loss_aux'], 0.4 * soft_ce(aux))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match='num_classes > 0'):
        OverLoCKClassifier(arch='xt', num_classes=0)
    with pytest.raises(ValueError, match='backbone option'):
        OverLoCKClassifier(arch='xt', num_classes=3, out_indices=(3, ))
    with pytest.raises(ValueError, match='has parameters'):
        OverLoCKClassifier(arch='xt', num_classes=3, cls_head=dict(
            type='LinearClsHead', num_classes=3, in_channels=8))
    with pytest.raises(ValueError, match="Invalid mode 'x'"):
        OverLoCKClassifier(arch=dict(
            depths=[1, 1, 1, 1], sub_depths=[1, 1], embed_dims=[8, 8, 8, 8],
            kernel_sizes=[5, 5, 5, 5], mlp_ratios=[1, 1, 1, 1],
            sub_num_heads=[1, 1], sub_mlp_ratios=[1, 1]),
            num_classes=3)(torch.zeros(1, 3, 32, 32), mode='x')


# ------------------------------------------------------------------ recipes
#: upstream: scripts/train_{arch}_model.sh (--drop-path) and the crop_pct
#: of models/overlock.py's default_cfg (validate.py resizes the short side
#: to floor(224 / crop_pct), then centre-crops 224)
UPSTREAM = {'xt': dict(dpr=0.1, crop_pct=0.925, resize=242),
            't': dict(dpr=0.15, crop_pct=0.95, resize=235),
            's': dict(dpr=0.4, crop_pct=0.95, resize=235),
            'b': dict(dpr=0.5, crop_pct=0.975, resize=229)}


def _cfg(name):
    return Config.fromfile(os.path.join(ROOT, 'configs', name))


def _unscoped(cfg):
    """A config dict (or list of them) without mmengine's ``_scope_``
    marks of values inherited from ``mmpretrain::`` bases."""
    if isinstance(cfg, (list, tuple)):
        return [_unscoped(c) for c in cfg]
    return {k: v for k, v in cfg.items() if k != '_scope_'}


@pytest.mark.parametrize('arch', ARCHS)
def test_config_equals_upstream_recipe(arch):
    want, cfg = UPSTREAM[arch], _cfg(f'overlock_{arch}_8xb256_in1k.py')
    assert cfg.default_scope == 'mmpretrain'
    assert cfg.custom_imports.imports == ['mmpretrain_overlock']
    m = cfg.model
    assert (m.type, m.arch, m.num_classes) == ('OverLoCKClassifier', arch,
                                               1000)
    assert m.drop_path_rate == want['dpr']
    assert m.aux_loss_weight == 0.4
    assert m.cls_head.loss == dict(type='LabelSmoothLoss',
                                   label_smooth_val=0.1, mode='original')
    assert m.train_cfg.augments == [dict(type='Mixup', alpha=0.8),
                                    dict(type='CutMix', alpha=1.0)]
    # lr 1e-3 per 1024 images, always scaled (--auto-lr): 2e-3 at 8 x 256
    opt = cfg.optim_wrapper
    assert opt.type == 'AmpOptimWrapper' and opt.loss_scale == 'dynamic'
    assert opt.optimizer == dict(type='AdamW', lr=1e-3, weight_decay=0.05,
                                 eps=1e-8, betas=(0.9, 0.999))
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=1024)
    assert cfg.train_dataloader.batch_size == 256  # x 8 GPUs
    assert opt.clip_grad == dict(max_norm=5.0, norm_type=2)
    assert opt.paramwise_cfg == dict(flat_decay_mult=0.0)
    warm, cos = cfg.param_scheduler
    assert (warm.type, warm.begin, warm.end, warm.by_epoch) == (
        'LinearLR', 0, 5, True)
    assert not warm.convert_to_iter_based  # timm steps per epoch
    assert warm.start_factor * 2e-3 == pytest.approx(1e-6)  # --warmup-lr
    assert (cos.type, cos.begin, cos.end, cos.eta_min) == (
        'CosineAnnealingLR', 5, 300, 1e-5)  # --min-lr
    assert cfg.train_cfg.max_epochs == 310  # 300 + 10 cool-down epochs
    ema, = cfg.custom_hooks
    assert (ema.type, ema.momentum, ema.update_buffers) == (
        'EMAHook', 1e-4, True)  # --model-ema-decay 0.9999
    assert cfg.sync_bn == 'torch'
    train = [t.type for t in cfg.train_dataloader.dataset.pipeline]
    assert train == ['LoadImageFromFile', 'RandomChoice', 'RandomFlip',
                     'RandAugment', 'RandomErasing', 'PackInputs']
    pipe = cfg.train_dataloader.dataset.pipeline
    assert [t[0].interpolation for t in pipe[1].transforms] == [
        'bilinear', 'bicubic']  # --train-interpolation random
    assert (pipe[3].policies, pipe[3].num_policies, pipe[3].magnitude_level,
            pipe[3].magnitude_std, pipe[3].total_level) == (
                'timm_increasing', 2, 9, 0.5, 10)  # rand-m9-mstd0.5-inc1
    assert (pipe[4].erase_prob, pipe[4].mode) == (0.25, 'rand')  # --reprob
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        test = loader.dataset.pipeline
        assert test[1] == dict(type='ResizeEdge', scale=want['resize'],
                               edge='short', backend='pillow',
                               interpolation='bicubic')
        assert test[2] == dict(type='CenterCrop', crop_size=224)
    assert want['resize'] == int(224 / want['crop_pct'])
    assert _unscoped(cfg.test_evaluator) == dict(type='Accuracy', topk=(1, 5))


@pytest.mark.parametrize('name', [f'overlock_{a}_8xb256_in1k.py'
                                  for a in ARCHS] + ['_toy/overlock_toy_cls.py'])
def test_configs_build_and_predict(name):
    from overlock_mm.runtime import build_model
    cfg = _cfg(name)
    small = name.startswith(('_toy', 'overlock_xt'))
    if not small:  # the same code path; shapes only
        with torch.device('meta'):
            model = build_model(cfg)
        assert isinstance(model, OverLoCKClassifier)
        return
    model = build_model(cfg).eval()
    assert isinstance(model, OverLoCKClassifier)
    num = cfg.model.num_classes
    with torch.no_grad():
        preds = model(torch.randn(2, 3, 64, 64), mode='predict')
    assert len(preds) == 2 and preds[0].pred_score.shape == (num, )
    assert float(preds[0].pred_score.sum()) == pytest.approx(1.0)


def test_no_weight_decay_exactly_for_1d_parameters():
    """timm's create_optimizer_v2: decay on parameters with ndim >= 2."""
    from mmengine.optim import build_optim_wrapper
    cfg = _cfg('overlock_t_8xb256_in1k.py')
    model = OverLoCKClassifier(arch=dict(
        depths=[1, 1, 1, 1], sub_depths=[1, 1], embed_dims=[8, 8, 16, 16],
        kernel_sizes=[7, 7, 5, 5], mlp_ratios=[1, 1, 1, 1],
        sub_num_heads=[1, 1], sub_mlp_ratios=[1, 1]), num_classes=3)
    wrapper_cfg = cfg.optim_wrapper.copy()
    wrapper_cfg.update(type='OptimWrapper')
    wrapper_cfg.pop('loss_scale')
    optim = build_optim_wrapper(model, wrapper_cfg).optimizer
    decay = {id(p): g['weight_decay'] for g in optim.param_groups
             for p in g['params']}
    params = list(model.parameters())
    assert len(decay) == len(params)
    assert any(p.ndim == 1 for p in params) and any(p.ndim > 1
                                                     for p in params)
    for p in params:
        assert decay[id(p)] == (0.0 if p.ndim <= 1 else 0.05)


def test_eval_option_sets_the_classification_evaluators():
    cfg = _cfg('overlock_t_8xb256_in1k.py')
    apply_eval_metrics(cfg, ['accuracy', 'ece'])
    assert _unscoped(cfg.test_evaluator) == [
        dict(type='Accuracy', topk=(1, 5)),
        dict(type='ExpectedCalibrationError', n_bins=15)]
    cfg = _cfg('overlock_t_8xb256_in1k.py')
    apply_eval_metrics(cfg, ['ece'])
    assert cfg.test_evaluator == [
        dict(type='ExpectedCalibrationError', n_bins=15)]
    with pytest.raises(ValueError, match='valid: accuracy ece'):
        apply_eval_metrics(cfg, ['mIoU'])


def test_safe_load_inside_mmengine_checkpoints_keeps_the_allowlist(tmp_path):
    """Leaving torch's safe_globals context removes its entries: a nested
    safe_load (e.g. a Pretrained init_cfg, or tools/test.py's strict
    classifier load) must not strip mmengine_checkpoints' allowlist, which
    --resume and later loads of mmengine checkpoints need."""
    import numpy as np

    from overlock.checkpoint import safe_load
    from overlock_mm.runtime import mmengine_checkpoints
    path = str(tmp_path / 'ck.pth')
    torch.save(dict(state_dict={'w': torch.ones(1)},
                    meta=dict(seed=np.array([1, 2]))), path)
    def allowed():
        return set(torch.serialization.get_safe_globals())

    before = allowed()
    with mmengine_checkpoints():
        inside = allowed()
        assert np.ndarray in inside - before
        safe_load(path)
        assert allowed() == inside
        torch.load(path, weights_only=True)  # numpy array still allowed
    assert allowed() == before
