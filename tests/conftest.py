import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
REFERENCE_DIR = os.environ.get(
    'OVERLOCK_REFERENCE_DIR',
    os.path.join(os.path.dirname(ROOT), 'shared', 'reference'))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def reference_file(name):
    path = os.path.join(REFERENCE_DIR, name)
    if not os.path.isfile(path):
        pytest.skip(f'reference data {path} not found (set OVERLOCK_REFERENCE_DIR)')
    return path


def upstream_to_arch(args):
    """Map the official constructor's keyword arguments to an arch dict."""
    return dict(
        depths=args['depth'],
        sub_depths=args['sub_depth'],
        embed_dims=args['embed_dim'],
        kernel_sizes=args['kernel_size'],
        mlp_ratios=args['mlp_ratio'],
        sub_num_heads=args['sub_num_heads'],
        sub_mlp_ratios=args['sub_mlp_ratio'],
        ls_init_values=args['ls_init_value'],
        res_scale=args['res_scale'],
        smk_size=args['smk_size'])


#: A small arch for fast tests (same structure as the official ones).
TINY_ARCH = dict(
    depths=[1, 1, 1, 1],
    sub_depths=[2, 1],
    embed_dims=[16, 24, 32, 48],
    kernel_sizes=[7, 7, 7, 5],
    mlp_ratios=[2, 2, 2, 2],
    sub_num_heads=[2, 3],
    sub_mlp_ratios=[2, 2])


def randomize_(model, seed=0):
    """Random weights and BN statistics so that every path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith('running_var'):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.2)
    return model
