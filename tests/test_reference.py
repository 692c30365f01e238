"""Numbers against the official implementation (../shared/reference)."""
import pytest
import torch

from conftest import reference_file, upstream_to_arch
from overlock import OverLoCK

FLAVOURS = ['detection', 'segmentation']


def _load(flavour):
    data = torch.load(reference_file(f'tiny_{flavour}.pt'), weights_only=True)
    model = OverLoCK(upstream_to_arch(data['upstream_args']),
                     fuse_overview=flavour == 'detection')
    model.load_state_dict(data['state_dict'], strict=True)
    return model, data


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_eval_outputs_match_upstream(flavour):
    model, data = _load(flavour)
    model.eval()
    assert len(data['eval_cases']) == 4
    with torch.no_grad():
        for case in data['eval_cases']:
            outs = model(case['input'])
            assert len(outs) == 4
            for out, ref in zip(outs, case['outputs']):
                assert out.shape == ref.shape
                torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


@pytest.mark.parametrize('flavour', FLAVOURS)
def test_train_outputs_and_gradients_match_upstream(flavour):
    model, data = _load(flavour)
    case = data['train_case']
    model.train()
    x = case['input'].clone().requires_grad_(True)
    outs = model(x)
    loss = sum((o * p).sum() for o, p in zip(outs, case['projections']))
    loss.backward()

    def rel(a, b):
        return ((a - b).abs().max() / b.abs().max()).item()

    for out, ref in zip(outs, case['outputs']):
        assert rel(out.detach(), ref) < 1e-4
    assert rel(x.grad, case['grad_input']) < 1e-4

    params = dict(model.named_parameters())
    scale = max(g.abs().max().item() for g in case['grad_params'].values())
    assert len(case['grad_params']) > 100
    for name, ref in case['grad_params'].items():
        grad = params[name].grad
        assert grad is not None, name
        if ref.abs().max() > 1e-3 * scale:
            assert rel(grad, ref) < 1e-4, name
        else:
            # structurally zero (a bias feeding a train-mode BatchNorm): the
            # reference holds rounding noise; ours must be as small.
            assert (grad - ref).abs().max() < 1e-4 * scale, name


def test_bn_running_stats_updated_like_upstream():
    model, data = _load('detection')
    model.train()
    with torch.no_grad():
        model(data['train_case']['input'])
    sd = model.state_dict()
    # the train-mode forward moved the running statistics away from the file
    assert not torch.equal(sd['patch_embed1.1.running_mean'],
                           data['state_dict']['patch_embed1.1.running_mean'])
