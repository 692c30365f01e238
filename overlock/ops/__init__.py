"""Kernels of OverLoCK, one dispatch point per operator.

* :mod:`.contmix`: the ContMix aggregation (:func:`contmix_aggregate`; the
  reference, slices and band implementations, natten 0.17 on CUDA) and its
  window geometry;
* :mod:`.dwconv`: depthwise convolutions (:func:`depthwise_conv2d`; CPU
  layout plans and backward, cuDNN / implicit GEMM on CUDA);
* :mod:`.cpu`: inference-only oneDNN convolutions with post-ops, layout
  helpers, the spatial L2 norm;
* :mod:`.accelerators`: lazy lookup of the optional CUDA packages;
* :mod:`.autotune`: the per-shape timing choice, bounded cache;
* :mod:`.caching`: the caches of constant tensors (:func:`clear_caches`).

Switches live in :mod:`overlock.config`; the setters are re-exported here
for convenience.
"""
from ..config import (reference_mode, set_accelerators, set_contmix_mode,
                      set_cpu_conv_mode, set_reference_mode)
from .accelerators import accelerator_status
from .autotune import AutoTuner
from .caching import clear_caches
from .contmix import (aggregate_window_major, bias_index, contmix_aggregate,
                      contmix_aggregate_reference, contmix_size,
                      neighborhood_bias, neighborhood_bias_index,
                      neighborhood_starts)
from .cpu import conv_act, is_channels_last, spatial_l2_norm
from .dwconv import depthwise_conv2d, dilate_kernel

__all__ = [
    'contmix_aggregate', 'contmix_aggregate_reference',
    'aggregate_window_major', 'neighborhood_starts',
    'neighborhood_bias_index', 'bias_index', 'neighborhood_bias',
    'contmix_size', 'clear_caches',
    'depthwise_conv2d', 'dilate_kernel', 'conv_act', 'is_channels_last',
    'spatial_l2_norm', 'accelerator_status', 'AutoTuner', 'set_accelerators',
    'set_contmix_mode', 'set_cpu_conv_mode', 'set_reference_mode',
    'reference_mode'
]
