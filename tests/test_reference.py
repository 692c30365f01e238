"""Numbers against the official implementation (tests/data: a compact copy
of the reference data, see tools/misc/compact_reference.py).

Stored results may differ from the official float32 values by at most
``reference_error(ref)``; every tolerance below is reduced by that bound, so
each assertion implies the one against the official values themselves.
"""
import pytest
import torch

from conftest import load_reference, reference_error, upstream_to_arch
from overlock import OverLoCK

#: input shapes of the eval cases kept per flavour
EVAL_INPUTS = {
    'detection': [(1, 3, 64, 64), (2, 3, 160, 224), (1, 3, 250, 330)],
    'segmentation': [(1, 3, 64, 64)],
}
FLAVOURS = list(EVAL_INPUTS)


def _load(flavour):
    data = load_reference(flavour)
    model = OverLoCK(upstream_to_arch(data['upstream_args']),
                     fuse_overview=flavour == 'detection')
    model.load_state_dict(data['state_dict'], strict=True)
    return model, data


def _assert_rel_below(out, ref, tol, name=''):
    """``max|out - official| < tol * max|official|``, given the stored
    ``ref`` within ``reference_error(ref)`` of the official tensor."""
    err = reference_error(ref)
    bound = tol * (ref.abs().max().item() - err) - err
    assert (out - ref).abs().max().item() < bound, name


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_eval_outputs_match_upstream(flavour):
    model, data = _load(flavour)
    model.eval()
    assert [tuple(c['input'].shape) for c in data['eval_cases']] == \
        EVAL_INPUTS[flavour]
    with torch.no_grad():
        for case in data['eval_cases']:
            outs = model(case['input'])
            assert len(outs) == 4
            for out, ref in zip(outs, case['outputs']):
                assert out.shape == ref.shape
                torch.testing.assert_close(
                    out, ref, rtol=0, atol=1e-4 - reference_error(ref))


def test_train_outputs_and_gradients_match_upstream():
    model, data = _load('detection')
    case = data['train_case']
    model.train()
    x = case['input'].clone().requires_grad_(True)
    outs = model(x)
    loss = sum((o * p).sum() for o, p in zip(outs, case['projections']))
    loss.backward()

    for out, ref in zip(outs, case['outputs']):
        _assert_rel_below(out.detach(), ref, 1e-4)
    _assert_rel_below(x.grad, case['grad_input'], 1e-4)

    params = dict(model.named_parameters())
    refs = case['grad_params']
    # a lower bound of the largest official parameter gradient
    scale = max(g.abs().max().item() - reference_error(g)
                for g in refs.values())
    assert len(refs) > 100
    for name, ref in refs.items():
        grad = params[name].grad
        assert grad is not None, name
        if ref.abs().max() > 1e-3 * scale:
            _assert_rel_below(grad, ref, 1e-4, name)
        else:
            # structurally zero (a bias feeding a train-mode BatchNorm): the
            # reference holds rounding noise; ours must be as small.
            assert (grad - ref).abs().max() < \
                1e-4 * scale - reference_error(ref), name


def test_bn_running_stats_updated_like_upstream():
    model, data = _load('detection')
    model.train()
    with torch.no_grad():
        model(data['train_case']['input'])
    sd = model.state_dict()
    # the train-mode forward moved the running statistics away from the file
    assert not torch.equal(sd['patch_embed1.1.running_mean'],
                           data['state_dict']['patch_embed1.1.running_mean'])
