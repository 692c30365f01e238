import io
import json
import lzma
import os
import shutil

# Without a GPU the Triton kernels run in Triton's interpreter; it must be on
# before triton is first imported (torch imports it).
if shutil.which('nvidia-smi') is None:
    os.environ.setdefault('TRITON_INTERPRET', '1')

import torch  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: compact copy of the official reference data (tools/misc/compact_reference.py)
DATA_DIR = os.path.join(ROOT, 'tests', 'data')
#: bits of the quantised reference results (see compact_reference.py)
QUANT_BITS = 20

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def _read_xz(name):
    with open(os.path.join(DATA_DIR, name), 'rb') as f:
        return lzma.decompress(f.read())


def _dequantize(obj):
    if isinstance(obj, dict) and 'quantized' in obj:
        assert obj['bits'] == QUANT_BITS
        return obj['quantized'].double().mul(obj['scale'] / 2**QUANT_BITS) \
            .float()
    if isinstance(obj, dict):
        return {k: _dequantize(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_dequantize(v) for v in obj]
    return obj


def load_reference(flavour):
    """The official outputs and gradients of a tiny model (``detection`` or
    ``segmentation``); results within :func:`reference_error` of the
    official float32 values."""
    data = torch.load(io.BytesIO(_read_xz(f'tiny_{flavour}.pt.xz')),
                      weights_only=True)
    return _dequantize(data)


def load_manifest():
    """``{form: {arch: [[key, shape], ...]}}`` of the official models."""
    return json.loads(_read_xz('state_dict_manifest.json.xz'))


def reference_error(ref):
    """An upper bound of ``|stored - official|`` for a reference tensor:
    quantisation rounds to ``max|r| / 2**QUANT_BITS`` (exactly stored tensors
    get the same, stricter-than-needed, allowance subtracted)."""
    half_step = 2.**-(QUANT_BITS + 1)
    return ref.abs().max().item() * half_step / (1 - half_step)


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
