"""Safe, reporting checkpoint loading for OverLoCK.

* :func:`safe_load` reads a file with ``torch.load(weights_only=True)``,
  allowing only a few harmless types that real checkpoints carry; anything
  else (a pickled callable, say) is refused before it can run.
* :func:`checkpoint_filter_fn` turns any official or OpenMMLab checkpoint into
  a state_dict for a given model (pure and idempotent).
* :func:`load_checkpoint` does both for a path or URL and logs a report.
"""
import argparse
import collections
import contextlib
import logging
import os
import pickle
import re
from typing import Dict, Iterable, List, Mapping, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

__all__ = [
    'safe_load', 'checkpoint_filter_fn', 'load_checkpoint', 'infer_arch',
    'safe_globals', 'allow_globals', 'CheckpointError', 'RELEASE_URL'
]

RELEASE_URL = 'https://github.com/LMMMEng/OverLoCK/releases/download/v1/'

#: Keys the detection / segmentation backbones have and ImageNet checkpoints
#: lack; missing them is expected.
OPTIONAL_PREFIXES = ('extra_norm.', 'h_proj.')
#: Classification heads: dropped when the model has none.
HEAD_PREFIXES = ('head.', 'aux_head.')
_WRAPPER_PREFIXES = ('module.', '_orig_mod.')


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def safe_globals() -> List[object]:
    """Harmless non-tensor types allowed inside checkpoints.

    ``argparse.Namespace`` (timm training args), ``collections`` containers and
    numpy arrays / scalars / dtypes (OpenMMLab metadata and message hubs).
    """
    allowed: List[object] = [
        argparse.Namespace, collections.OrderedDict, collections.defaultdict,
        set, frozenset, slice, range, complex
    ]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return allowed
    allowed += [np.ndarray, np.dtype, np.bool_, np.int8, np.int16, np.int32,
                np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
                np.float16, np.float32, np.float64]
    allowed += [type(np.dtype(t)) for t in (
        'bool', 'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16',
        'uint32', 'uint64', 'float16', 'float32', 'float64')]
    for modname in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        try:
            mod = __import__(modname, fromlist=['_reconstruct', 'scalar'])
        except ImportError:
            continue
        allowed += [mod._reconstruct, mod.scalar]
        break
    return allowed


@contextlib.contextmanager
def allow_globals(extra: Iterable[object]):
    """``torch.serialization.safe_globals(extra)`` for only the entries not
    allowed yet: leaving torch's context removes the entries it added, which
    would strip an enclosing allowlist (e.g.
    ``overlock_mm.runtime.mmengine_checkpoints``) of the shared ones."""
    allowed = set(torch.serialization.get_safe_globals())
    with torch.serialization.safe_globals(
            [g for g in extra if g not in allowed]):
        yield


def _download(url: str) -> str:
    cache_dir = os.path.join(torch.hub.get_dir(), 'checkpoints')
    filename = os.path.basename(url.split('?')[0])
    path = os.path.join(cache_dir, filename)
    if os.path.isfile(path):
        return path
    os.makedirs(cache_dir, exist_ok=True)
    logger.info('Downloading %s to %s', url, path)
    try:
        torch.hub.download_url_to_file(url, path, progress=False)
    except Exception as e:  # urllib/ssl/socket errors have no common base
        raise CheckpointError(
            f'Could not download {url} ({type(e).__name__}: {e}). Download it '
            f'by other means and put it at {path}, or pass the local file '
            f'path instead of the URL.') from None
    return path


def safe_load(filename: str, map_location='cpu'):
    """``torch.load(filename, weights_only=True)`` with clear errors.

    Args:
        filename (str): A local path, or an ``http(s)://`` URL (downloaded once
            into ``torch.hub.get_dir()/checkpoints``).
        map_location: As for :func:`torch.load`. Defaults to ``'cpu'``.

    Raises:
        CheckpointError: The file is missing, or it holds objects other than
            tensors, plain containers and :func:`safe_globals` types. Such
            objects are never constructed or called.
    """
    if not isinstance(filename, (str, os.PathLike)):
        raise TypeError(f'A checkpoint is a path or an http(s) URL, got '
                        f'{type(filename).__name__}')
    filename = os.fspath(filename)
    if re.match(r'^https?://', filename):
        filename = _download(filename)
    if not os.path.isfile(filename):
        raise CheckpointError(f'Checkpoint file not found: {filename}')
    if os.path.getsize(filename) == 0:
        raise CheckpointError(f'Could not read checkpoint {filename}: the '
                              'file is empty (0 bytes)')
    try:
        with allow_globals(safe_globals()):
            return torch.load(
                filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if 'GLOBAL' in ln or 'Unsupported'
                       in ln), first[-1] if first else '')
        raise CheckpointError(
            f'Refused to load {filename}: it contains a pickled object that is '
            f'not a tensor or a plain container ({detail.strip()}). Nothing '
            f'from it was executed. If you trust the file, re-save just its '
            f'tensors: torch.save(torch.load(f, weights_only=False)'
            f"['state_dict'], 'clean.pth').") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(
            f'Could not read checkpoint {filename}: {e}') from None
    except (KeyError, ValueError, TypeError, IndexError) as e:
        # the weights-only unpickler reading a file that is not a pickle
        # (text, JSON, numpy): e.g. KeyError on an unknown opcode
        raise CheckpointError(
            f'Could not read checkpoint {filename}: not a file written by '
            f'torch.save ({type(e).__name__}: {e})') from None


def _unwrap(checkpoint) -> Dict[str, torch.Tensor]:
    sd = checkpoint
    for _ in range(3):  # e.g. {'model': {'state_dict': ...}}
        if not isinstance(sd, Mapping):
            break
        for key in ('state_dict', 'model', 'state_dict_ema', 'model_ema'):
            if key in sd and isinstance(sd[key], Mapping):
                sd = sd[key]
                break
        else:
            break
    if not isinstance(sd, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(
            'The checkpoint holds no state_dict: expected a mapping of tensor '
            "names to tensors, optionally under 'state_dict' or 'model'.")
    return dict(sd)


def _strip(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _WRAPPER_PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    if any(k.startswith('backbone.') for k in out):
        # a whole detector / segmentor: keep its backbone only
        out = {
            k[len('backbone.'):]: v
            for k, v in out.items() if k.startswith('backbone.')
        }
    return out


def _select_prefix(sd: Dict[str, torch.Tensor],
                   prefix: Optional[str]) -> Dict[str, torch.Tensor]:
    """The tensors under ``prefix.`` with it removed (all when no prefix)."""
    if not prefix:
        return sd
    head = prefix.rstrip('.') + '.'
    out = {k[len(head):]: v for k, v in sd.items() if k.startswith(head)}
    if not out:
        raise CheckpointError(
            f'No key of the checkpoint starts with {head!r} (prefix '
            f'{prefix!r}); its keys start with '
            f'{sorted({k.split(".")[0] for k in sd})[:8]}. Fix the prefix or '
            f'leave it out.')
    return out


def _drop_heads(sd: Dict[str, torch.Tensor],
                model: Optional[nn.Module]) -> Dict[str, torch.Tensor]:
    if model is None:
        return sd
    names = set(model.state_dict())
    for prefix in HEAD_PREFIXES:
        if not any(n.startswith(prefix) for n in names):
            sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    return sd


def checkpoint_filter_fn(state_dict, model: Optional[nn.Module] = None):
    """Make an official / OpenMMLab / timm checkpoint fit an OverLoCK model.

    Unwraps ``state_dict`` / ``model`` containers, strips ``module.`` and
    ``backbone.`` prefixes and, when ``model`` has no classification heads,
    drops ``head.*`` and ``aux_head.*``. Pure (the input is not modified) and
    idempotent.
    """
    return _drop_heads(_strip(_unwrap(state_dict)), model)


def infer_arch(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Name of the official arch a state_dict was made for, or ``None``."""
    from .model import ARCH_SETTINGS
    try:
        dims = [int(state_dict[f'patch_embed{i}.0.weight'].shape[0])
                for i in range(2, 5)]
        dims.insert(0, int(state_dict['patch_embed1.9.weight'].shape[0]))
    except KeyError:
        return None
    depths = []
    for s in range(1, 5):
        idx = {int(m.group(1)) for k in state_dict
               for m in [re.match(rf'blocks{s}\.(\d+)\.', k)] if m}
        depths.append(max(idx) + 1 if idx else 0)
    for name, cfg in ARCH_SETTINGS.items():
        if cfg['embed_dims'] == dims and cfg['depths'] == depths:
            return name
    return None


def _is_deploy(state_dict: Iterable[str]) -> bool:
    keys = list(state_dict)
    return not any('.origin_bn.' in k for k in keys) and any(
        k.endswith('lk_origin.bias') for k in keys)


def _short(keys: List[str], n: int = 8) -> str:
    keys = sorted(keys)
    more = f' ... (+{len(keys) - n} more)' if len(keys) > n else ''
    return ', '.join(keys[:n]) + more


def load_checkpoint(model: nn.Module,
                    filename,
                    map_location='cpu',
                    strict: bool = True,
                    logger: Optional[logging.Logger] = None,
                    prefix: Optional[str] = None) -> dict:
    """Load an OverLoCK checkpoint (path, URL or already loaded object).

    The file is read once (:func:`safe_load`) and unwrapped once; with
    ``prefix`` only the tensors under ``prefix.`` are used (e.g.
    ``prefix='backbone'`` of a whole detector, as mmengine's ``Pretrained``
    initialiser has it).

    Missing ``extra_norm.*`` / ``h_proj.*`` (absent from ImageNet weights) are
    reported; with ``strict`` any other missing key or any shape mismatch is an
    error that names the keys (and the arch the checkpoint was made for).

    Returns:
        dict: ``loaded`` (number of tensors), ``missing``, ``unexpected``,
        ``mismatched`` (lists of names) and ``dropped`` (heads removed).
    """
    log = logger or globals()['logger']
    if isinstance(filename, (str, os.PathLike)):
        source = os.fspath(filename)
        raw = safe_load(source, map_location)
    elif isinstance(filename, Mapping):
        source, raw = '<state_dict>', filename
    else:
        raise TypeError('load_checkpoint takes a path, an http(s) URL or a '
                        f'loaded checkpoint (a dict), got '
                        f'{type(filename).__name__}')
    unwrapped = _strip(_select_prefix(_unwrap(raw), prefix))
    sd = _drop_heads(unwrapped, model)
    dropped = sorted(set(unwrapped) - set(sd))

    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatched = [
        k for k in sd
        if k in own and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    bad_missing = [k for k in missing if not k.startswith(OPTIONAL_PREFIXES)]

    if strict and (bad_missing or mismatched):
        ckpt_arch = infer_arch(sd)
        model_arch = getattr(model, 'arch', None)
        hints = []
        if ckpt_arch and model_arch and ckpt_arch != model_arch:
            hints.append(f'The checkpoint is OverLoCK-{ckpt_arch.upper()} but '
                         f'the model is OverLoCK-{str(model_arch).upper()}: '
                         f"build the model with arch='{ckpt_arch}'.")
        if _is_deploy(sd) and not getattr(model, 'deploy', False):
            hints.append('The checkpoint is re-parameterised: build the model '
                         'with deploy=True.')
        elif not _is_deploy(sd) and getattr(model, 'deploy', False) \
                and any('.origin_bn.' in k for k in sd):
            hints.append('The checkpoint is not re-parameterised: build the '
                         'model with deploy=False (and call reparameterize() '
                         'after loading if you want the deploy form).')
        heads = ('head.', 'aux_head.')
        if bad_missing and all(k.startswith(heads) for k in bad_missing) \
                and not mismatched:
            hints.append('It has no classifier (weights of a backbone, e.g. '
                         'of a detector): build the model with '
                         'num_classes=0, or load with strict=False to start '
                         'a fresh classifier.')
        elif mismatched and all(k.startswith(heads) for k in mismatched) \
                and not bad_missing:
            hints.append('Its classifier has another number of classes: '
                         'load with strict=False to keep the rest and start '
                         'a fresh classifier.')
        parts = [f'Checkpoint {source} does not fit the model.'] + hints
        if bad_missing:
            parts.append(f'Missing {len(bad_missing)} keys: '
                         f'{_short(bad_missing)}.')
        if mismatched:
            parts.append('Shape mismatch: ' + _short([
                f'{k} {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}'
                for k in mismatched
            ], 5) + '.')
        raise CheckpointError(' '.join(parts))

    to_load = {k: v for k, v in sd.items() if k in own and k not in mismatched}
    if own and not to_load:  # strict=False, and nothing of it fits
        raise CheckpointError(
            f'Checkpoint {source} has none of the model\'s tensors: it holds '
            f'{len(sd)} others ({_short(list(sd), 4)}), the model '
            f'{_short(list(own), 4)}. Is it an OverLoCK checkpoint, and is '
            f'the prefix right (prefix={prefix!r})?')
    model.load_state_dict(to_load, strict=False)
    report = dict(
        loaded=len(to_load),
        missing=missing,
        unexpected=unexpected,
        mismatched=mismatched,
        dropped=dropped)
    log.info('Loaded %d/%d tensors from %s; missing %d%s; unexpected %d%s; '
             'shape mismatch %d%s; dropped heads %d.', len(to_load), len(own),
             source, len(missing),
             f' ({_short(missing, 4)})' if missing else '', len(unexpected),
             f' ({_short(unexpected, 4)})' if unexpected else '',
             len(mismatched), f' ({_short(mismatched, 4)})'
             if mismatched else '', len(dropped))
    if unexpected:
        log.warning('Unexpected keys in %s were ignored: %s', source,
                    _short(unexpected))
    return report
