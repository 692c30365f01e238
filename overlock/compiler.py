"""``torch.compile`` arguments for OverLoCK.

Inductor's *layout optimisation* makes every convolution of a graph
channels-last when its heuristics expect a speed-up. They count a depthwise
convolution (one input channel per group) as an ordinary one, so a static
OverLoCK training or inference graph on CUDA would get channels-last
depthwise convolutions, which cuDNN runs ~9x slower than NCHW ones (17x17,
64 channels, 2x200x304 on an H100: 9.1 against 0.97 ms). With dynamic sizes
inductor skips the optimisation on CUDA; on CPU it always applies it, and
then failed to order the symbolic strides of a channels-last graph output.
:func:`compile_kwargs` turns it off::

    model = torch.compile(model, **overlock.compile_kwargs(mode='max-autotune'))

``torch.compile`` takes a ``mode`` or ``options``, not both: a mode is
replaced by its options (``torch._inductor.list_mode_options``) plus this
one. Other backends get the arguments unchanged.
"""
from typing import Any, Dict

__all__ = ['compile_kwargs']

#: inductor options OverLoCK compiles with (see the module docstring)
INDUCTOR_OPTIONS = {'layout_optimization': False}


def compile_kwargs(**kwargs: Any) -> Dict[str, Any]:
    """``kwargs`` for ``torch.compile`` (``mode``, ``options``, ``backend``,
    ``dynamic``, ...) with inductor's layout optimisation off unless
    ``options`` sets it.

    Raises:
        ValueError: both ``mode`` and ``options`` (as ``torch.compile``).
    """
    out = dict(kwargs)
    if out.get('backend', 'inductor') != 'inductor':
        return out
    mode, options = out.pop('mode', None), out.pop('options', None)
    if mode is not None and options is not None:
        raise ValueError(
            'torch.compile takes either mode or options, not both; got mode='
            f'{mode!r} and options={options!r}. Put the mode\'s options '
            '(torch._inductor.list_mode_options(mode)) into options.')
    merged = dict(INDUCTOR_OPTIONS)
    if mode is not None and mode != 'default':
        from torch._inductor import list_mode_options
        merged.update(list_mode_options(mode, out.get('dynamic')))
    merged.update(options or {})
    out['options'] = merged
    return out
