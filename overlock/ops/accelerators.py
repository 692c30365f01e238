"""Optional CUDA accelerators, imported lazily on first use.

* ``natten`` 0.17.x provides ``natten.functional.na2d_av`` (the ContMix
  aggregation); natten >= 0.20 removed it and is recognised and skipped with
  one log line;
* ``depthwise_conv2d_implicit_gemm`` (from RepLKNet / UniRepLKNet) provides
  implicit-GEMM large-kernel depthwise convolutions.

Neither is needed: the PyTorch paths give the same numbers. The switches
``natten`` and ``igemm`` of :mod:`overlock.config` allow or forbid them.
"""
import logging
import os

from ..config import settings

logger = logging.getLogger(__name__)

__all__ = ['natten_av', 'igemm_functions', 'triton_kernels', 'load_triton',
           'accelerator_status']

# ``None``: not looked up yet, ``False``: unavailable.
_natten_av = None
_igemm = None
_triton = None


def natten_av():
    """``natten.functional.na2d_av`` if natten 0.17.x is installed and the
    ``natten`` switch allows it, else ``None``."""
    global _natten_av
    if not settings.natten:
        return None
    if _natten_av is None:
        try:
            import natten
            from natten import functional as natten_functional
        except ImportError:
            _natten_av = False
            logger.info('natten is not installed: ContMix aggregation uses '
                        'the PyTorch implementation.')
            return None
        fn = getattr(natten_functional, 'na2d_av', None)
        version = getattr(natten, '__version__', '?')
        if fn is None:
            _natten_av = False
            logger.info(
                'natten %s has no na2d_av (removed in natten 0.20); ContMix '
                'aggregation uses the PyTorch implementation. Install '
                'natten 0.17.x to use its CUDA kernels.', version)
        else:
            _natten_av = fn
            logger.info('ContMix aggregation uses natten %s na2d_av on CUDA.',
                        version)
    return _natten_av or None


def igemm_functions():
    """``(fp32, fp16)`` autograd functions of
    ``depthwise_conv2d_implicit_gemm`` if installed and allowed by the
    ``igemm`` switch, else ``None``."""
    global _igemm
    if not settings.igemm:
        return None
    if _igemm is None:
        try:
            import depthwise_conv2d_implicit_gemm as mod
            fp32 = getattr(mod, '_DepthWiseConv2dImplicitGEMMFP32')
            fp16 = getattr(mod, '_DepthWiseConv2dImplicitGEMMFP16')
        except (ImportError, AttributeError):
            _igemm = False
            logger.info('depthwise_conv2d_implicit_gemm is not available: '
                        'large-kernel depthwise convolutions use '
                        'torch.nn.functional.conv2d.')
        else:
            _igemm = (fp32, fp16)
            logger.info('large-kernel depthwise convolutions use '
                        'depthwise_conv2d_implicit_gemm on CUDA.')
    return _igemm or None


def interpreter_bf16_dot() -> None:
    """Make Triton's interpreter multiply bfloat16 ``tl.dot`` operands as
    numbers. It keeps bfloat16 blocks as their raw 16 bits (numpy has no
    bfloat16) and its ``create_dot`` multiplies those integers (triton
    3.7). Widening both operands to float32 first is exact, and so are
    their products; the compiled kernels are not affected. Applied once,
    on importing :mod:`.triton_dwconv` with ``TRITON_INTERPRET=1``."""
    from triton.runtime import interpreter
    builder = interpreter.InterpreterBuilder
    if getattr(builder.create_dot, '_overlock_bf16', False):
        return
    import numpy as np
    import triton.language as tl
    original = builder.create_dot

    def widen(t):
        if t.dtype.scalar != tl.bfloat16:
            return t
        bits = t.data.astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), tl.float32)

    def create_dot(self, a, b, d, *args, **kwargs):
        return original(self, widen(a), widen(b), d, *args, **kwargs)

    create_dot._overlock_bf16 = True
    builder.create_dot = create_dot


def load_triton(name='triton_contmix'):
    """The Triton module ``overlock.ops.<name>``, or ``None`` when triton
    cannot be imported (looked up once)."""
    global _triton
    if _triton is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401
        except ImportError as e:  # no triton, or one without triton.language
            _triton = False
            logger.info('triton is not available (%s): ContMix aggregation '
                        'and depthwise convolutions use the PyTorch '
                        'implementations.', e)
        else:
            _triton = {}
    if _triton is False:
        return None
    if name not in _triton:
        if name == 'triton_contmix':
            from . import triton_contmix as mod
        elif name == 'triton_dwconv':
            from . import triton_dwconv as mod
        else:
            raise ValueError(f'no Triton module {name!r}')
        _triton[name] = mod
    return _triton[name]


def triton_kernels(tensor, name='triton_contmix'):
    """The Triton kernels ``overlock.ops.<name>`` (:mod:`.triton_contmix`,
    :mod:`.triton_dwconv`) if the ``kernels`` switch selects them for
    ``tensor``, else ``None``.

    Raises:
        RuntimeError: ``kernels='triton'`` but triton cannot be imported, or
            a CPU tensor without ``TRITON_INTERPRET=1``.
    """
    mode = settings.kernels
    if mode == 'torch' or (mode == 'auto' and not tensor.is_cuda):
        return None
    if mode == 'triton':
        if not tensor.is_cuda and \
                os.environ.get('TRITON_INTERPRET', '0') != '1':
            raise RuntimeError(
                "kernels='triton' on a CPU tensor needs the Triton "
                'interpreter: set TRITON_INTERPRET=1 before the first use '
                "(slow; meant for tests), or use kernels='auto'.")
        mod = load_triton(name)
        if mod is None:
            raise RuntimeError(
                "kernels='triton' (OVERLOCK_KERNELS) but triton cannot be "
                "imported; install it (it comes with torch's CUDA wheels) or "
                "use kernels='auto'.")
        return mod
    return load_triton(name)


def accelerator_status() -> dict:
    """Which accelerators are installed and allowed (imports them)."""
    return dict(natten=natten_av() is not None,
                igemm=igemm_functions() is not None,
                triton=settings.kernels != 'torch' and
                load_triton() is not None)
