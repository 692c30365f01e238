"""The mm runner of ``tools/train.py`` / ``tools/test.py``: mmengine's
:class:`~mmengine.runner.Runner` with a working ``compile`` option.

mmengine 0.10.7 compiles ``model.train_step`` whole, so dynamo also traces
the parameter update (backward, gradient clipping, optimizer step). That
fails on torch >= 2.6 whenever the config has a ``paramwise_cfg`` (every
config of this project): the constructor leaves the param groups as
``ConfigDict``\\ s, which dynamo's optimizer support does not take
(``'UserDefinedDictVariable' object has no attribute 'items'``); and with
one group per parameter, tracing the step would take minutes anyway.
:class:`OverLoCKRunner` keeps dynamo out of the optimizer wrapper's
``update_params``: the data preprocessor, the forward and the losses are
compiled (the backward still runs the compiled backward graphs), the
update runs eagerly.

It also refuses a checkpoint none of whose tensors are the model's
(``load_from``, ``tools/test.py CONFIG CKPT``): mmengine loads
non-strictly, so such a checkpoint (e.g. a backbone's weights given as a
detector's) would run a randomly initialised model with one warning.
"""
import re

import torch
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.runner import Runner

from overlock.checkpoint import CheckpointError

__all__ = ['OverLoCKRunner', 'eager_updates']


def eager_updates(optim_wrapper) -> None:
    """Make ``update_params`` of ``optim_wrapper`` (each wrapper of an
    :class:`~mmengine.optim.OptimWrapperDict`) run outside dynamo."""
    wrappers = optim_wrapper.values() if isinstance(
        optim_wrapper, OptimWrapperDict) else [optim_wrapper]
    for wrapper in wrappers:
        wrapper.update_params = torch.compiler.disable(wrapper.update_params)


class OverLoCKRunner(Runner):
    """:class:`~mmengine.runner.Runner` whose ``compile`` option works with
    any optimizer config (see the module docstring)."""

    def _maybe_compile(self, target: str) -> None:
        if self.cfg.get('compile') and target == 'train_step' and \
                getattr(self, 'optim_wrapper', None) is not None:
            eager_updates(self.optim_wrapper)
        super()._maybe_compile(target)

    def load_checkpoint(self, filename, map_location='cpu', strict=False,
                        revise_keys=[(r'^module.', '')]):
        checkpoint = super().load_checkpoint(filename, map_location, strict,
                                             revise_keys)
        model = self.model.module if is_model_wrapper(self.model) \
            else self.model
        check_overlap(model, checkpoint, filename, revise_keys)
        return checkpoint


def check_overlap(model: torch.nn.Module, checkpoint, filename,
                  revise_keys=((r'^module.', ''), )) -> None:
    """Raise :class:`~overlock.checkpoint.CheckpointError` when no tensor of
    ``checkpoint`` (its ``state_dict``, keys revised as mmengine does) is
    one of ``model``'s."""
    state = checkpoint.get('state_dict', checkpoint) \
        if isinstance(checkpoint, dict) else {}
    keys = []
    for key in state:
        for pattern, replacement in revise_keys:
            key = re.sub(pattern, replacement, key)
        keys.append(key)
    own = model.state_dict()
    if not own or set(keys) & set(own):
        return
    ours = sorted(own)[:3]
    theirs = sorted(keys)[:3]
    hint = ''
    if any(k.startswith(('stem', 'patch_embed', 'blocks')) for k in keys) \
            and any(k.startswith('backbone.') for k in own):
        hint = (' It looks like the weights of a backbone alone: give them to '
                "the backbone, model.backbone.init_cfg=dict(type='Pretrained',"
                f" checkpoint='{filename}').")
    raise CheckpointError(
        f'Checkpoint {filename} has none of the model\'s tensors (model: '
        f'{", ".join(ours)}, ...; checkpoint: {", ".join(theirs) or "none"}'
        f', ...): is it a checkpoint of this config\'s model?{hint}')
