"""Caches of the constant tensors OverLoCK builds per size, dtype and
device (ContMix index and one-hot maps, kernel taps), in one place:
:func:`cache_unless_compiling` makes one, :func:`clear_caches` empties all.
"""
import contextlib
import functools

import torch

__all__ = ['cache_unless_compiling', 'clear_caches', 'outside_inference_mode']


def outside_inference_mode():
    """Cached constants are built as normal tensors: one built under
    ``torch.inference_mode`` could not be saved for a later backward
    (evaluating, then training at the same size, failed so)."""
    if torch.compiler.is_compiling():  # traced: nothing is cached
        return contextlib.nullcontext()
    return torch.inference_mode(False) if \
        torch.is_inference_mode_enabled() else contextlib.nullcontext()


#: every cache of :func:`cache_unless_compiling` (see :func:`clear_caches`)
_CACHES = []


def cache_unless_compiling(maxsize: int):
    """``functools.lru_cache(maxsize)`` for the constant tensors built per
    size, dtype and device (index maps, one-hot maps, kernel taps),
    bypassed while dynamo traces (it would trace through the cache anyway,
    and warn on every compilation that it does), emptied by
    :func:`clear_caches`."""
    def decorate(fn):
        cached = functools.lru_cache(maxsize=maxsize)(fn)
        _CACHES.append(cached)

        @functools.wraps(fn)
        def call(*args):
            if torch.compiler.is_compiling():
                return fn(*args)
            return cached(*args)

        call.cache_clear, call.cache_info = cached.cache_clear, \
            cached.cache_info
        return call
    return decorate


def clear_caches() -> None:
    """Empty the caches of constant tensors of every device: frees their
    memory, and is needed where a device's tensors are swapped for others
    of the same device name (fake CUDA tensors of
    ``tools/analysis/fake_cuda.py`` and real ones, which cannot meet)."""
    for cached in _CACHES:
        cached.cache_clear()
