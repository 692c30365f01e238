"""Run-time switches of OverLoCK, in one place.

Every switch has a default, an environment variable (read once, at import)
and a public setter; :func:`options` sets some of them for a ``with`` block
and restores the previous values afterwards::

    import overlock
    with overlock.options(fast_inference=False, contmix='slices'):
        ...
    overlock.set_options(cpu_conv='aten')
    overlock.get_options()   # {'fast_inference': True, 'contmix': ..., ...}

None of them changes the numbers a model computes (beyond float rounding):
they choose *how* it computes them.

Switches (environment variable in brackets):

* ``fast_inference`` (bool; ``OVERLOCK_DISABLE_FAST_INFERENCE=1`` turns it
  off): in inference, use folded weights (merged large kernels) and, on CPU,
  the fused path;
* ``natten`` (bool; ``OVERLOCK_DISABLE_NATTEN=1``): natten 0.17's
  ``na2d_av`` for the ContMix aggregation of CUDA tensors, when installed;
* ``igemm`` (bool; ``OVERLOCK_DISABLE_IGEMM=1``): implicit-GEMM large-kernel
  depthwise convolutions on CUDA, when installed;
* ``contmix`` (``'auto'``, ``'band'``, ``'slices'``; ``OVERLOCK_CONTMIX``):
  the PyTorch ContMix aggregation;
* ``cpu_conv`` (``'auto'``, ``'cf'``, ``'cl'``, ``'aten'``;
  ``OVERLOCK_CPU_CONV``): how depthwise convolutions run on CPU;
* ``reference`` (bool; ``OVERLOCK_REFERENCE=1``): the official code's
  structure, for the benchmark's baseline and tests only;
* ``kernels`` (``'auto'``, ``'triton'``, ``'torch'``; ``OVERLOCK_KERNELS``):
  ``'auto'``: the Triton ContMix kernels (:mod:`overlock.ops.triton_contmix`)
  for CUDA tensors when triton is installed; ATen's depthwise convolutions
  for float32 maps (faster on an H100 than :mod:`overlock.ops.triton_dwconv`)
  and, per pass, the faster of ATen's and the tensor-core Triton kernels for
  float16 / bfloat16 maps, timed once per shape (see
  :mod:`overlock.ops.dwconv`); ``'triton'``: all Triton kernels, for every
  tensor (on CPU with ``TRITON_INTERPRET=1``: how the tests check them);
  ``'torch'``: none.
"""
import contextlib
import os
from typing import Any, Dict, Iterator

__all__ = [
    'options', 'get_options', 'set_options', 'set_fast_inference',
    'set_accelerators', 'set_contmix_mode', 'set_cpu_conv_mode',
    'set_reference_mode', 'reference_mode', 'settings'
]

_TRUE = ('1', 'true', 'yes', 'on')
_FALSE = ('0', 'false', 'no', 'off', '')

#: ``name: (default, allowed values or bool, environment variable, the
#: variable's value turns the switch off)``
_SPEC = {
    'fast_inference': (True, bool, 'OVERLOCK_DISABLE_FAST_INFERENCE', True),
    'natten': (True, bool, 'OVERLOCK_DISABLE_NATTEN', True),
    'igemm': (True, bool, 'OVERLOCK_DISABLE_IGEMM', True),
    'contmix': ('auto', ('auto', 'band', 'slices'), 'OVERLOCK_CONTMIX', False),
    'cpu_conv': ('auto', ('auto', 'cf', 'cl', 'aten'), 'OVERLOCK_CPU_CONV',
                 False),
    'reference': (False, bool, 'OVERLOCK_REFERENCE', False),
    'kernels': ('auto', ('auto', 'triton', 'torch'), 'OVERLOCK_KERNELS',
                False),
}


def _check(name: str, value: Any) -> Any:
    if name not in _SPEC:
        raise ValueError(f'Unknown OverLoCK option {name!r}; valid options '
                         f'are {sorted(_SPEC)}.')
    allowed = _SPEC[name][1]
    if allowed is bool:
        if not isinstance(value, bool):
            raise ValueError(f'OverLoCK option {name} must be True or False, '
                             f'got {value!r}.')
        return value
    if value not in allowed:
        raise ValueError(f'OverLoCK option {name} must be one of {allowed}, '
                         f'got {value!r}.')
    return value


def _from_env(name: str) -> Any:
    default, allowed, var, disables = _SPEC[name]
    raw = os.environ.get(var)
    if raw is None:
        return default
    text = raw.strip().lower()
    if allowed is bool:
        if text not in _TRUE + _FALSE:
            raise ValueError(f'Environment variable {var}={raw!r}: use 1 or '
                             f'0 (or unset it).')
        return (text in _TRUE) != disables
    if text not in allowed:
        raise ValueError(f'Environment variable {var}={raw!r}: use one of '
                         f'{allowed} (or unset it).')
    return text


class _Settings:
    """The current values; read them as attributes (``settings.contmix``)."""
    __slots__ = tuple(_SPEC)

    def __init__(self):
        for name in _SPEC:
            setattr(self, name, _from_env(name))


#: The live settings (read on hot paths; change them with the setters).
settings = _Settings()


def get_options() -> Dict[str, Any]:
    """The current value of every switch."""
    return {name: getattr(settings, name) for name in _SPEC}


def set_options(**values) -> None:
    """Set switches by name (see the module docstring); all values are
    checked before any is changed."""
    checked = {name: _check(name, value) for name, value in values.items()}
    for name, value in checked.items():
        setattr(settings, name, value)


@contextlib.contextmanager
def options(**values) -> Iterator[Dict[str, Any]]:
    """Set switches inside a ``with`` block and restore the previous values
    on exit (also after an exception). Yields the values in force."""
    before = get_options()
    set_options(**values)
    try:
        yield get_options()
    finally:
        set_options(**before)


# Shorthands kept from earlier releases.
def _flag(value: Any) -> Any:
    """A shorthand's switch value as a bool (1 / 0, numpy's bools), except a
    string: ``'off'`` is truthy, so :func:`_check` refuses it instead."""
    return value if isinstance(value, str) else bool(value)


def set_fast_inference(enabled: bool) -> None:
    """``set_options(fast_inference=enabled)``: in eval mode without
    autograd, fold BatchNorms, LayerScales and dilated branches into the
    neighbouring convolutions (cached until a weight changes) and, on CPU,
    run the fused path (oneDNN post-ops, channels-last, in-place work)."""
    set_options(fast_inference=_flag(enabled))


def set_accelerators(natten=None, igemm=None) -> None:
    """Allow or forbid natten 0.17's ``na2d_av`` and the implicit-GEMM
    depthwise convolutions on CUDA; ``None`` leaves a switch unchanged."""
    set_options(**{k: _flag(v) for k, v in
                   dict(natten=natten, igemm=igemm).items() if v is not None})


def set_contmix_mode(mode: str) -> None:
    """``set_options(contmix=mode)``: ``'auto'`` (the faster of the two
    PyTorch implementations per shape, timed once), ``'band'`` or
    ``'slices'``."""
    set_options(contmix=mode)


def set_cpu_conv_mode(mode: str) -> None:
    """``set_options(cpu_conv=mode)``: ``'auto'`` (fastest layout per shape,
    timed once), ``'cf'``, ``'cl'`` or ``'aten'`` (plain ``F.conv2d``)."""
    set_options(cpu_conv=mode)


def set_reference_mode(enabled: bool) -> None:
    """``set_options(reference=enabled)``: run every layer as the official
    code does (gathered ContMix aggregation, dilated branches one by one,
    element-wise residuals, no folding). For benchmarks and tests only."""
    set_options(reference=_flag(enabled))


def reference_mode() -> bool:
    """Whether the reference (official-structure) mode is on."""
    return settings.reference
