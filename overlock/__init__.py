"""OverLoCK backbone for PyTorch (CVPR 2025, arXiv 2502.20087).

Imports only torch and timm (and registers ``overlock_*`` models in timm).
"""
from .checkpoint import (checkpoint_filter_fn, infer_arch, load_checkpoint,
                         safe_load)
from .compiler import compile_kwargs
from .config import (get_options, options, set_accelerators,
                     set_contmix_mode, set_cpu_conv_mode, set_fast_inference,
                     set_options, set_reference_mode)
from .model import ARCH_SETTINGS, OverLoCK
from .ops import contmix_aggregate

__version__ = '0.1.0'

__all__ = [
    'OverLoCK', 'ARCH_SETTINGS', 'load_checkpoint', 'checkpoint_filter_fn',
    'infer_arch', 'safe_load', 'contmix_aggregate', 'options', 'get_options',
    'set_options', 'set_accelerators', 'set_fast_inference',
    'set_contmix_mode', 'set_cpu_conv_mode', 'set_reference_mode',
    'compile_kwargs'
]

from . import timm_models  # noqa: E402,F401  (registers overlock_* in timm)
