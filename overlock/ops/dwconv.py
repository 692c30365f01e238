"""Stride-1 depthwise convolutions with "same" padding: one dispatch point,
:func:`depthwise_conv2d`, for every depthwise convolution of the model.

* CUDA (and ``kernels='triton'``): the input is made NCHW-contiguous first
  (a channels-last view, e.g. a LayerNorm's output, would send cuDNN to its
  ~9x slower channels-last depthwise kernels, and the Triton kernels take
  NCHW); then ``depthwise_conv2d_implicit_gemm`` for the large kernels when
  installed (``large_kernel=True``); otherwise:

  - float32 maps: plain ``F.conv2d`` (cuDNN / ATen). Measured on an H100
    (OverLoCK-T training step, 2x800x1216, every depthwise shape timed both
    ways): ATen's kernels were faster than the direct Triton kernels of
    :mod:`.triton_dwconv` for all 37 backward shapes (1.05-6x) and 32 of 37
    forward ones (Triton saved 0.5 ms in all);
  - float16 / bfloat16 maps (also under autocast), ``kernels='auto'``, a
    GPU of compute capability 8.0 or later with triton: the custom op, whose
    forward, input gradient and weight gradient each run ATen's kernel or
    the tensor-core Triton one, whichever was faster for the shape: timed
    with CUDA events the first time a key (pass, dtype, batch, channels,
    kernel, dilation and the map's :func:`size_class`) is seen, on the
    call's own tensors, after checking that both give the same numbers
    (:func:`tuned_choices` lists the choices; not while a CUDA graph is
    captured: ATen for unseen keys then). As with ``cudnn.benchmark``, the
    choice can differ between runs and GPUs, and with it the float
    rounding; ``kernels='torch'`` keeps ATen throughout;
* ``kernels='triton'`` (``OVERLOCK_KERNELS=triton``): the Triton kernels for
  every float32/16/bfloat16 tensor, also on CPU with ``TRITON_INTERPRET=1``
  (how the tests run the GPU code); ``kernels='torch'``: never;
* CPU (float32/64): the forward in whichever memory layout (and, for dilated
  kernels, dilated or zero-inserted dense kernel) is fastest for the shape,
  timed once (:class:`~overlock.ops.autotune.AutoTuner`); the backward takes
  the input gradient as a flipped-kernel forward and the weight gradient as a
  grouped convolution, both much faster than oneDNN's own backward kernels
  for large kernels (``tools/analysis/bench_dwconv.py``). Half precision
  (e.g. bfloat16 autocast): oneDNN's kernels on CPUs that have them
  (:func:`~overlock.ops.cpu.has_half_kernels`); elsewhere the same
  float32 path on the half tensors' exact float32 values, the results
  rounded back (ATen would run them channel by channel, 4-70x slower);
* ``cpu_conv='aten'``, the reference mode or ``torch.compile`` (CPU): plain
  ``F.conv2d`` (under compile: one graph, no timing in it).
"""
import functools
import logging
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import register_flop_formula

from ..config import settings
from .accelerators import load_triton, igemm_functions, triton_kernels
from .autotune import AutoTuner, cuda_time_once
from .cpu import has_half_kernels, is_channels_last, layout_of
from .dispatch import HALF_DTYPES, direct, needs_grad

__all__ = ['depthwise_conv2d', 'dilate_kernel', 'tuned_choices']

logger = logging.getLogger(__name__)

_plans = AutoTuner('depthwise conv plan')


def dilate_kernel(weight: torch.Tensor, dilation: int) -> torch.Tensor:
    """The dense kernel equal to ``weight`` applied with ``dilation``."""
    if dilation == 1:
        return weight
    c, g, k, _ = weight.shape
    size = dilation * (k - 1) + 1
    out = weight.new_zeros(c, g, size, size)
    out[:, :, ::dilation, ::dilation] = weight
    return out


def _conv_plan(x, weight, padding, dilation):
    """``(channels_last, dense)``: the fastest way to run this depthwise
    convolution forward on CPU. ``dense`` (dilated kernels only) runs the
    kernel with its zeros inserted as an undilated one: oneDNN's dilated
    depthwise path is slow for some shapes (9x9, dilation 2, 64 channels at
    128x128: 29 ms dilated, 6 ms dense)."""
    if settings.cpu_conv in ('cf', 'cl'):
        return settings.cpu_conv == 'cl', False
    key = (tuple(x.shape), is_channels_last(x), tuple(weight.shape),
           padding, dilation, x.dtype, torch.get_num_threads())
    return _plans.choose(key, lambda: _plan_candidates(x, weight, padding,
                                                       dilation))


def _plan_candidates(x, weight, padding, dilation):
    plans = [(False, False), (True, False)]
    if dilation > 1:
        plans += [(False, True), (True, True)]
    xd, w = x.detach(), weight.detach()

    def run(plan):
        with torch.no_grad():
            _conv_forward(xd, w, None, padding, dilation, plan)

    return [(plan, functools.partial(run, plan)) for plan in plans]


def _conv_forward(x, weight, bias, padding, dilation, plan):
    """Convolve with ``plan = (channels_last, dense)``; the output keeps the
    input's layout."""
    channels_last, dense = plan
    if dense and dilation > 1:
        weight, dilation = dilate_kernel(weight, dilation), 1
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    y = F.conv2d(x.contiguous(memory_format=fmt), weight, bias, 1, padding,
                 dilation, weight.shape[0])
    return y.contiguous(memory_format=layout_of(x))


def _weight_grad(x, grad_out, kernel_size, padding, dilation):
    """Depthwise weight gradient as a grouped convolution of the padded input
    with the output gradient (channels as groups, batch as input channels):
    ``dW[c, i, j] = sum_{b,h,w} x_pad[b, c, h + i*d, w + j*d] * gy[b, c, h, w]``.
    oneDNN's own depthwise weight-gradient kernel is 10-20x slower for large
    kernels."""
    b, c, h, w = grad_out.shape
    kernel = grad_out.transpose(0, 1)  # C, B, H, W
    if kernel_size * dilation <= 3:
        # small kernels: zero padding inside the convolution (no padded copy
        # of x; 52 -> 12 ms for 3x3, 256 ch at 128x128); for large ones
        # oneDNN is 7-10x faster on an explicitly padded input
        inp = x.transpose(0, 1).reshape(1, c * b, h, w)
        out = F.conv2d(inp, kernel, None, dilation, padding, 1, c)
    else:
        xp = F.pad(x, [padding, padding, padding, padding])
        inp = xp.transpose(0, 1).reshape(1, c * b, xp.shape[2], xp.shape[3])
        out = F.conv2d(inp, kernel, None, dilation, 0, 1, c)
    return out.view(c, 1, kernel_size, kernel_size)


def _float32(t):
    """Half-precision tensors as float32 (their values are exact in it)."""
    return t.float() if t is not None and t.dtype in HALF_DTYPES else t


def _cpu_forward(x, weight, bias, padding, dilation):
    """The CPU forward in its timed plan; half tensors computed in float32
    and the result rounded to ``x``'s dtype (as a half kernel accumulating
    in float32 rounds it), autocast off (it would cast them back)."""
    dtype = x.dtype
    with torch.autocast('cpu', enabled=False):
        x, weight, bias = _float32(x), _float32(weight), _float32(bias)
        out = _conv_forward(x, weight, bias, padding, dilation,
                            _conv_plan(x, weight, padding, dilation))
    # no cast op when none is needed (a traced graph would keep its dtype)
    return out if out.dtype == dtype else out.to(dtype)


class _DepthwiseConvCPU(torch.autograd.Function):
    """The CPU convolution with its faster backward; half tensors are kept
    as they are and computed in float32 (:func:`_cpu_forward`)."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (padding, dilation, None if bias is None else bias.dtype)
        return _cpu_forward(x, weight, bias, padding, dilation)

    @staticmethod
    # never compiled: a backward run by a compiled train step (mmengine's
    # compile) would be traced by dynamo and unpack the saved tensors twice
    # under activation checkpointing
    @torch.compiler.disable
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        padding, dilation, bias_dtype = ctx.conf
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = grad_w = grad_b = None
        with torch.autocast('cpu', enabled=False):
            x32, w32 = _float32(x), _float32(weight)
            grad_out = _float32(grad_out).contiguous()
            if need_x:
                # stride 1, symmetric padding: the input gradient is the
                # correlation of grad_out with the flipped kernel, i.e.
                # another forward depthwise convolution (in its fastest
                # layout); oneDNN's backward-data kernel is far slower for
                # dilated kernels
                w_flip = w32.flip(-1, -2)
                grad_x = _conv_forward(
                    grad_out, w_flip, None, padding, dilation,
                    _conv_plan(grad_out, w_flip, padding, dilation)
                ).to(x.dtype)
            if need_w:
                grad_w = _weight_grad(x32.contiguous(), grad_out,
                                      weight.shape[-1], padding, dilation
                                      ).to(weight.dtype)
            if need_b and bias_dtype is not None:
                grad_b = grad_out.sum((0, 2, 3)).to(bias_dtype)
        return grad_x, grad_w, grad_b, None, None


# --------------------------------------------------------------------------
# The custom op: the Triton kernels (kernels='triton'), or per pass the
# faster of ATen and Triton (kernels='auto', half precision on a GPU), seen
# by autograd, autocast and torch.compile as one op
# --------------------------------------------------------------------------
_TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: maps whose convolutions ``kernels='auto'`` times on a GPU: for float32
#: the Triton (direct) kernels lost to ATen on an H100 for every backward
#: shape of OverLoCK-T and saved 0.5 ms in all in the forward
_TUNED_DTYPES = (torch.float16, torch.bfloat16)
#: ``(pass, dtype, N, C, size classes, K, dilation, device)`` -> ``'aten'`` /
#: ``'triton'``, timed once per key on the call's own tensors
_choices = AutoTuner('CUDA depthwise conv (aten, triton)', maxsize=1024,
                     timer=cuda_time_once)


def size_class(n: int) -> int:
    """``n`` rounded up to one of four sizes per octave above 32: a map's
    height and width in the tuning key (detection's varying image sizes then
    re-time a few classes, not every size; the ranking of two kernels does
    not change within one)."""
    if n <= 32:
        return n
    step = 1 << (n.bit_length() - 3)
    return -(-n // step) * step


_GPUS = {}


@torch.compiler.assume_constant_result
def _triton_gpu(index: int) -> bool:
    """Whether the tensor-core Triton kernels run on CUDA device ``index``
    (looked up once; a constant for dynamo): CUDA, compute capability 8.0
    or later (bfloat16 ``tl.dot``; the kernels are compiled and checked for
    sm_80 and sm_90) and triton installed."""
    ok = _GPUS.get(index)
    if ok is None:
        ok = _GPUS[index] = torch.cuda.is_available() and \
            torch.cuda.get_device_capability(index) >= (8, 0) and \
            load_triton('triton_dwconv') is not None
    return ok


def _capturing() -> bool:
    """Whether a CUDA graph is being captured (no timing then)."""
    return torch.cuda.is_initialized() and \
        torch.cuda.is_current_stream_capturing()


def _tuned(x, weight, padding, dilation, dtype) -> bool:
    """Whether ``kernels='auto'`` chooses between ATen and Triton for this
    convolution of a CUDA map, run in ``dtype`` (autocast's)."""
    return (settings.kernels == 'auto' and not settings.reference
            and dtype in _TUNED_DTYPES and _shape_applies(
                x, weight, padding, dilation)
            and _triton_gpu(x.device.index))


def _agree(out, ref) -> bool:
    """The Triton result is ATen's up to half-precision rounding (the
    products are summed in float32 by both; a kernel miscompiled for this
    GPU gives far larger errors)."""
    err = (out.float() - ref.float()).abs().max()
    return bool(err <= 2e-2 * ref.float().abs().max() + 1e-6)


def _use_triton(pass_: str, x, weight, dilation, run) -> bool:
    """Whether this pass (``'forward'``, ``'input_grad'``, ``'weight_grad'``)
    runs the Triton kernel: always with ``kernels='triton'``; with
    ``kernels='auto'`` if it was faster than ATen's for this key, timed
    the first time a key is seen (``run(triton)`` computes the pass either
    way) after checking that both give the same numbers."""
    if settings.kernels != 'auto':
        return settings.kernels == 'triton'
    n, c, h, w = x.shape
    key = (pass_, x.dtype, n, c, size_class(h), size_class(w),
           weight.shape[-1], dilation, x.device.index)
    choice = _choices.get(key)
    if choice is None:
        if _capturing():
            return False
        ref = run(False)
        if not bool(torch.isfinite(ref).all()):
            return False  # e.g. an overflowing AMP step: decide later
        if not _choices.choices():
            logger.info(
                'Timing ATen against the Triton depthwise convolution kernels '
                'once per shape (half precision; the first steps are slower: '
                "Triton also compiles each kernel variant once). kernels="
                "'torch' (OVERLOCK_KERNELS=torch) keeps ATen.")
        out = run(True)
        if _agree(out, ref):
            choice = _choices.choose(key, lambda: [
                ('aten', functools.partial(run, False)),
                ('triton', functools.partial(run, True))])
        else:
            logger.warning(
                'The Triton depthwise convolution (%s, %s) differs from '
                "ATen's on this GPU for %s: ATen is used for it. Please "
                'report this with the output of `python -m '
                'torch.utils.collect_env`.', pass_, x.dtype, key[2:])
            choice = _choices.choose(key, lambda: [('aten', None)])
    return choice == 'triton'


def tuned_choices() -> dict:
    """``{key: 'aten' or 'triton'}``: what ``kernels='auto'`` chose so far
    for the depthwise convolutions of half-precision CUDA maps (key:
    ``(pass, dtype, N, C, size class of H, of W, K, dilation, device)``)."""
    return _choices.choices()


def _cudnn_backward(grad_out, x, weight, padding, dilation, need_x, need_w):
    gx, gw, _ = torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1, 1], [padding, padding],
        [dilation, dilation], False, [0, 0], weight.shape[0],
        [need_x, need_w, False])
    return gx, gw


def _triton():
    return load_triton('triton_dwconv')


def _conv_impl(x: torch.Tensor, weight: torch.Tensor,
               bias: Optional[torch.Tensor], padding: int,
               dilation: int) -> torch.Tensor:
    def run(triton):
        if triton:
            return _triton().forward(x, weight, bias, padding, dilation)
        return F.conv2d(x, weight, bias, 1, padding, dilation,
                        weight.shape[0]).contiguous()

    return run(_use_triton('forward', x, weight, dilation, run))


_conv_op = torch.library.custom_op('overlock::depthwise_conv2d',
                                   mutates_args=())(_conv_impl)


@_conv_op.register_fake
def _(x, weight, bias, padding, dilation):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _conv_backward_impl(grad_out: torch.Tensor, x: torch.Tensor,
                        weight: torch.Tensor, padding: int, dilation: int,
                        need_x: bool, need_w: bool,
                        need_b: bool) -> Tuple[torch.Tensor, torch.Tensor,
                                               torch.Tensor]:
    grad_out = grad_out.contiguous()

    def input_grad(triton):
        if triton:
            return _triton().input_grad(grad_out, weight, padding, dilation)
        return _cudnn_backward(grad_out, x, weight, padding, dilation,
                               True, False)[0]

    def weight_grad(triton):
        if triton:
            return _triton().weight_grad(x, grad_out, weight.shape[-1],
                                         padding, dilation)
        return _cudnn_backward(grad_out, x, weight, padding, dilation,
                               False, True)[1]

    triton_x = need_x and _use_triton('input_grad', grad_out, weight,
                                      dilation, input_grad)
    triton_w = need_w and _use_triton('weight_grad', x, weight, dilation,
                                      weight_grad)
    gx = input_grad(True) if triton_x else None
    gw = weight_grad(True) if triton_w else None
    aten_x, aten_w = need_x and not triton_x, need_w and not triton_w
    if aten_x or aten_w:  # ATen's gradients in one call
        ax, aw = _cudnn_backward(grad_out, x, weight, padding, dilation,
                                 aten_x, aten_w)
        gx, gw = (ax if aten_x else gx), (aw if aten_w else gw)
    gb = grad_out.sum((0, 2, 3), dtype=torch.float32).to(grad_out.dtype) \
        if need_b else None
    # custom ops return tensors: empty ones stand for "not needed"; the
    # gradients are contiguous whatever the inputs' strides (as the fake
    # says: inductor lays out what it compiles by the fake's strides)
    return (gx.contiguous() if need_x else x.new_empty(0),
            gw.contiguous() if need_w else weight.new_empty(0),
            gb if need_b else x.new_empty(0))


_conv_backward_op = torch.library.custom_op(
    'overlock::depthwise_conv2d_backward',
    mutates_args=())(_conv_backward_impl)


@_conv_backward_op.register_fake
def _(grad_out, x, weight, padding, dilation, need_x, need_w, need_b):
    dense = torch.contiguous_format
    return (torch.empty_like(x, memory_format=dense)
            if need_x else x.new_empty(0),
            torch.empty_like(weight, memory_format=dense) if need_w
            else weight.new_empty(0),
            x.new_empty(x.shape[1]) if need_b else x.new_empty(0))


def _setup_context(ctx, inputs, output):
    x, weight, bias, padding, dilation = inputs
    ctx.save_for_backward(x, weight)
    ctx.conf = (padding, dilation, bias is not None)


def _backward(ctx, grad_out):
    x, weight = ctx.saved_tensors
    padding, dilation, has_bias = ctx.conf
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    need_b = need_b and has_bias
    backward = _conv_backward_impl if direct(grad_out, x, weight) else \
        _conv_backward_op
    gx, gw, gb = backward(grad_out, x, weight, padding, dilation, need_x,
                          need_w, need_b)
    return (gx if need_x else None, gw if need_w else None,
            gb if need_b else None, None, None)


_conv_op.register_autograd(_backward, setup_context=_setup_context)


class _DepthwiseConvEager(torch.autograd.Function):
    """The custom op's forward and backward without its dispatch (eager
    execution, see :mod:`.dispatch`): the same kernels, less host time."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation):
        _setup_context(ctx, (x, weight, bias, padding, dilation), None)
        return _conv_impl(x, weight, bias, padding, dilation)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        return _backward(ctx, grad_out)


def _macs(x_shape, weight_shape) -> int:
    n, c, h, w = x_shape
    return n * c * h * w * weight_shape[-1] * weight_shape[-2]


@register_flop_formula(torch.ops.overlock.depthwise_conv2d)
def _conv_flops(x_shape, weight_shape, *args, **kwargs):
    return 2 * _macs(x_shape, weight_shape)


@register_flop_formula(torch.ops.overlock.depthwise_conv2d_backward)
def _conv_backward_flops(grad_shape, x_shape, weight_shape, padding,
                         dilation, need_x, need_w, need_b, *args, **kwargs):
    return 2 * _macs(x_shape, weight_shape) * (int(need_x) + int(need_w))


def _shape_applies(x, weight, padding, dilation) -> bool:
    """A 4-D map (made NCHW by :func:`depthwise_conv2d` before this is
    asked) and an odd "same" kernel: what the Triton kernels compute."""
    k = weight.shape[-1]
    return (x.dim() == 4 and k % 2 == 1
            and tuple(weight.shape) == (x.shape[1], 1, k, k)
            and 2 * padding == dilation * (k - 1))


def _op_applies(x, weight, padding, dilation) -> bool:
    """Whether ``kernels='triton'`` sends this convolution to the custom op:
    a float32/16/bfloat16 map of the right shape (on CUDA, or on CPU with
    ``TRITON_INTERPRET=1``)."""
    return (settings.kernels == 'triton' and not settings.reference
            and x.dtype in _TRITON_DTYPES
            and _shape_applies(x, weight, padding, dilation)
            and triton_kernels(x, 'triton_dwconv') is not None)


def _custom(x, weight, bias, padding, dilation):
    """Through the custom op, or in plain eager execution (:func:`.direct`)
    its autograd function or implementation."""
    if not direct(x, weight, bias):
        return _conv_op(x, weight, bias, padding, dilation)
    if needs_grad(x, weight, bias):
        return _DepthwiseConvEager.apply(x, weight, bias, padding, dilation)
    return _conv_impl(x, weight, bias, padding, dilation)


def _autocast(x, weight, bias):
    """Under autocast, the tensors cast as ``F.conv2d`` would cast them
    (autocast does not know the custom ops and the CPU autograd function,
    and their backward runs without autocast, so they get one dtype here)."""
    device = x.device.type
    if not torch.is_autocast_enabled(device):
        return x, weight, bias
    dtype = torch.get_autocast_dtype(device)

    def cast(t):  # autocast leaves float64 alone
        return t.to(dtype) if t is not None and t.dtype != torch.float64 \
            else t

    return cast(x), cast(weight), cast(bias)


def _compute_dtype(x):
    """The dtype a convolution of ``x`` runs in (autocast's, if enabled)."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return x.dtype


def _igemm_conv(x, weight, bias):
    impl = igemm_functions()
    if impl is None:
        return None
    fn = impl[1] if x.dtype == torch.float16 else impl[0]
    out = fn.apply(x.contiguous(), weight)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1).to(out.dtype)
    return out


def depthwise_conv2d(x: torch.Tensor,
                     weight: torch.Tensor,
                     bias: Optional[torch.Tensor] = None,
                     padding: int = 0,
                     dilation: int = 1,
                     large_kernel: bool = False) -> torch.Tensor:
    """Stride-1 depthwise convolution, equal to ``F.conv2d(x, weight, bias,
    1, padding, dilation, C)`` to float rounding (see the module docstring
    for how it runs).

    Args:
        large_kernel (bool): An undilated "same" large kernel: may use
            ``depthwise_conv2d_implicit_gemm`` on CUDA. Defaults to False.
    """
    if weight.dim() != 4 or weight.shape[1] != 1 or \
            x.dim() in (3, 4) and weight.shape[0] != x.shape[-3]:
        raise ValueError(
            f'depthwise_conv2d expects a weight (C, 1, kH, kW) with C = the '
            f'channels of x, got weight {tuple(weight.shape)} for x '
            f'{tuple(x.shape)}')
    # on CUDA and for the Triton kernels NCHW: cuDNN's channels-last
    # depthwise kernels are ~9x slower, the Triton kernels and iGEMM take
    # NCHW only
    if x.is_cuda and settings.kernels != 'triton':
        x = x.contiguous()
        if large_kernel:
            out = _igemm_conv(*_autocast(x, weight, bias))
            if out is not None:
                return out
        if _tuned(x, weight, padding, dilation, _compute_dtype(x)):
            return _custom(*_autocast(x, weight, bias), padding, dilation)
        # autocast casts (and caches the parameters' casts) itself
        return F.conv2d(x, weight, bias, 1, padding, dilation,
                        weight.shape[0])
    x, weight, bias = _autocast(x, weight, bias)
    if settings.kernels == 'triton':
        x = x.contiguous()
        if _op_applies(x, weight, padding, dilation):
            return _custom(x, weight, bias, padding, dilation)
        if x.is_cuda:
            return F.conv2d(x, weight, bias, 1, padding, dilation,
                            weight.shape[0])
    # under torch.compile: aten's convolution (traceable, and inductor
    # knows it); the timed plans above are Python dynamo would break on.
    # Half precision: oneDNN's kernels where this CPU has them; where not,
    # ATen would run the convolution channel by channel (slow_conv2d,
    # 4-70x slower than float32), so it is computed in float32
    if settings.cpu_conv == 'aten' or settings.reference or \
            torch.compiler.is_compiling() or \
            not _shape_applies(x, weight, padding, dilation) or \
            x.dtype not in (torch.float32, torch.float64) + HALF_DTYPES or \
            (x.dtype in HALF_DTYPES and has_half_kernels(x.dtype)):
        return F.conv2d(x, weight, bias, 1, padding, dilation,
                        weight.shape[0])
    if not needs_grad(x, weight, bias):
        return _cpu_forward(x, weight, bias, padding, dilation)
    return _DepthwiseConvCPU.apply(x, weight, bias, padding, dilation)
