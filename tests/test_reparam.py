"""Re-parameterisation: merging the dilated branches into the large kernels."""
import torch

from conftest import TINY_ARCH, randomize_
from overlock import OverLoCK
from overlock.model import DilatedReparamBlock


def test_block_reparam_keeps_outputs():
    for k in (5, 7, 9, 11, 13, 15, 17, 19):
        blk = randomize_(DilatedReparamBlock(6, k), seed=k).eval()
        x = torch.randn(2, 6, 23, 20)
        with torch.no_grad():
            before = blk(x)
            blk.reparameterize()
            after = blk(x)
        assert set(blk.state_dict()) == {'lk_origin.weight', 'lk_origin.bias'}
        torch.testing.assert_close(after, before, rtol=0, atol=1e-4)


def test_model_reparam_keeps_outputs_and_matches_deploy_keys():
    model = randomize_(OverLoCK(TINY_ARCH)).eval()
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        before = model(x)
        model.reparameterize()
        after = model(x)
    assert model.deploy
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    deploy = OverLoCK(TINY_ARCH, deploy=True)
    assert list(deploy.state_dict()) == list(model.state_dict())
    deploy.load_state_dict(model.state_dict(), strict=True)
    deploy.eval()
    with torch.no_grad():
        for a, b in zip(deploy(x), before):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert not any('dil_' in k or 'origin_bn' in k for k in model.state_dict())


def test_reparam_is_idempotent():
    model = OverLoCK(TINY_ARCH).eval()
    model.reparameterize()
    keys = list(model.state_dict())
    model.reparameterize()
    assert list(model.state_dict()) == keys
