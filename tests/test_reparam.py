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


def test_inference_uses_merged_kernel_and_tracks_changes():
    """no_grad eval runs one merged convolution per block; it equals the
    branch sum and follows later changes of weights and statistics."""
    blk = randomize_(DilatedReparamBlock(4, 7), seed=1).eval()
    x = torch.randn(1, 4, 12, 12)
    with torch.enable_grad():
        branch = blk(x).detach()  # the branch path (grad enabled)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), branch, rtol=0, atol=1e-5)
        blk.origin_bn.running_mean.add_(1.)
        blk.dil_conv_k5_1.weight.mul_(2.)
        merged = blk(x)
    with torch.enable_grad():
        branch = blk(x).detach()
    assert not torch.allclose(merged, blk.lk_origin(x))
    torch.testing.assert_close(merged, branch, rtol=0, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(blk(x), branch, rtol=0, atol=1e-5)
