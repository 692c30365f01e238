"""CUDA tensors without a GPU: a model's forward on *fake* CUDA tensors
(``torch._subclasses.FakeTensorMode``): the shapes, dtypes, strides and
the dispatch a GPU would take (our CUDA branches, the Triton custom ops
through their fake kernels, CUDA autocast's cast lists), with no memory
and no computation, at any input size::

    fake = FakeCuda()
    model = fake.module(OverLoCK('t'))        # parameters, buffers: fake CUDA
    with fake, fake.autocast(torch.float16):  # CUDA autocast, no GPU needed
        outs = model(fake.randn(1, 3, 800, 1216))

What it cannot run: the backward (the autograd engine needs a CUDA
context for CUDA tensors, fake or not) and anything that reads values
(``.item()``, ``nonzero``: FakeTensorMode raises
``DataDependentOutputException``, which is also how such a host
synchronisation, fatal to CUDA-graph capture, shows itself).

Used by ``count_ops.py --device fake-cuda`` and
``tests/test_cuda_dispatch.py``.
"""
import contextlib
from typing import Iterator, Optional

import torch
from torch import nn

__all__ = ['FakeCuda']


def _clear_caches():
    """OverLoCK caches constant tensors per device (``cuda:0`` for fake and
    real tensors alike, which cannot meet, nor can two fake modes' ones)."""
    from overlock.ops import clear_caches
    clear_caches()


class FakeCuda:
    """A fake-tensor mode whose tensors live on ``cuda:0``. Entering and
    leaving it empties OverLoCK's caches of constant tensors."""

    def __init__(self):
        from torch._subclasses.fake_tensor import FakeTensorMode
        self.mode = FakeTensorMode()

    def __enter__(self):
        _clear_caches()
        return self.mode.__enter__()

    def __exit__(self, *exc):
        try:
            return self.mode.__exit__(*exc)
        finally:
            _clear_caches()

    def tensor(self, t: torch.Tensor) -> torch.Tensor:
        """A fake CUDA copy of a real tensor (same dtype, shape, strides
        where CUDA keeps them)."""
        real = t.detach()  # outside the mode: a real op on a real tensor
        with self.mode:
            return self.mode.from_tensor(real).to('cuda')

    def module(self, module: nn.Module) -> nn.Module:
        """``module`` with every parameter and buffer replaced, in place,
        by a fake CUDA copy (parameters keep ``requires_grad``); build the
        module outside the mode (constructors read values)."""
        for m in module.modules():
            for name, p in list(m._parameters.items()):
                if p is not None:
                    m._parameters[name] = nn.Parameter(
                        self.tensor(p), requires_grad=p.requires_grad)
            for name, b in list(m._buffers.items()):
                if b is not None:
                    m._buffers[name] = self.tensor(b)
        return module

    def randn(self, *size: int,
              dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        with self.mode:
            return torch.randn(*size, dtype=dtype, device='cuda')

    @staticmethod
    @contextlib.contextmanager
    def autocast(dtype: Optional[torch.dtype]) -> Iterator[None]:
        """CUDA autocast to ``dtype`` (``None``: off). ``torch.autocast``
        turns itself off on a machine without CUDA; this sets the same
        thread-local state it sets, the dispatcher's CUDA autocast then
        casts fake CUDA tensors as it casts real ones."""
        if dtype is None:
            yield
            return
        enabled = torch.is_autocast_enabled('cuda')
        before = torch.get_autocast_dtype('cuda')
        torch.set_autocast_enabled('cuda', True)
        torch.set_autocast_dtype('cuda', dtype)
        torch.autocast_increment_nesting()
        try:
            yield
        finally:
            if torch.autocast_decrement_nesting() == 0:
                torch.clear_autocast_cache()
            torch.set_autocast_enabled('cuda', enabled)
            torch.set_autocast_dtype('cuda', before)
