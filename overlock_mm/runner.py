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
"""
import torch
from mmengine.optim import OptimWrapperDict
from mmengine.runner import Runner

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
