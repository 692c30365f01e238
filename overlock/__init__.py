"""OverLoCK backbone for PyTorch (CVPR 2025, arXiv 2502.20087)."""
from .checkpoint import (checkpoint_filter_fn, infer_arch, load_checkpoint,
                         safe_load)
from .model import ARCH_SETTINGS, OverLoCK, set_fast_inference
from .ops import (contmix_aggregate, set_accelerators, set_contmix_mode,
                  set_cpu_conv_mode)

__version__ = '0.1.0'

__all__ = [
    'OverLoCK', 'ARCH_SETTINGS', 'load_checkpoint', 'checkpoint_filter_fn',
    'infer_arch', 'safe_load', 'contmix_aggregate', 'set_accelerators',
    'set_fast_inference', 'set_contmix_mode', 'set_cpu_conv_mode'
]

from . import timm_models  # noqa: E402,F401  (registers overlock_* in timm)
