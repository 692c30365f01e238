"""Choose the fastest of several equivalent implementations, once per shape.

Several CPU kernels of OverLoCK have two or more implementations that give
the same numbers but whose speed depends on the shape (the ContMix
aggregation: *band* or *slices*; depthwise convolutions: memory layout and
dilated or dense kernels). An :class:`AutoTuner` times each candidate the
first time a key (shape, dtype, thread count, ...) is seen and remembers the
winner in a bounded least-recently-used cache. On CUDA the depthwise
convolutions of half-precision maps choose between ATen's kernels and the
Triton ones the same way, timed with CUDA events (:func:`cuda_time_once`).
"""
import collections
import logging
import time
from typing import Callable, Hashable, Sequence, Tuple

logger = logging.getLogger(__name__)

__all__ = ['AutoTuner', 'time_once', 'cuda_time_once']


def time_once(fn: Callable[[], object], repeats: int = 2) -> float:
    """Best wall time of ``repeats`` calls of ``fn`` after one warm-up."""
    fn()
    best = float('inf')
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cuda_time_once(fn: Callable[[], object], repeats: int = 3) -> float:
    """Best device time (CUDA events, seconds) of ``repeats`` calls of
    ``fn`` on the current stream after one warm-up (which also compiles a
    Triton kernel on its first use)."""
    import torch
    fn()
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    best = float('inf')
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


class AutoTuner:
    """Per-key choice among candidates, timed once per key.

    Args:
        name (str): Shown in the debug log lines.
        maxsize (int): Keys remembered (least recently used dropped first).
            Defaults to 512.
        timer (Callable): ``timer(fn)``: the time of one candidate, in
            seconds. Defaults to :func:`time_once` (wall time).
    """

    def __init__(self, name: str, maxsize: int = 512,
                 timer: Callable[[Callable[[], object]], float] = time_once):
        self.name = name
        self.maxsize = maxsize
        self.timer = timer
        self._cache: 'collections.OrderedDict' = collections.OrderedDict()

    def choose(self, key: Hashable,
               candidates: Callable[[], Sequence[Tuple[Hashable,
                                                       Callable[[], object]]]]):
        """The label of the fastest candidate for ``key``. ``candidates()``
        returns ``(label, fn)`` pairs; it is called, and each ``fn`` timed,
        only the first time a key is seen (or after it was dropped). A single
        pair is chosen without timing."""
        choice = self._cache.get(key)
        if choice is not None:
            self._cache.move_to_end(key)
            return choice
        pairs = candidates()
        times = [self.timer(fn) for _, fn in pairs] if len(pairs) > 1 \
            else [0.]
        choice = pairs[times.index(min(times))][0]
        self._cache[key] = choice
        if len(self._cache) > self.maxsize:
            self._cache.popitem(last=False)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug('%s %s: %s -> %s', self.name, key, ', '.join(
                f'{label} {t * 1e3:.2f} ms'
                for (label, _), t in zip(pairs, times)), choice)
        return choice

    def get(self, key: Hashable):
        """The remembered choice for ``key`` (marked as recently used), or
        ``None``; never times anything (e.g. while a CUDA graph is being
        captured)."""
        choice = self._cache.get(key)
        if choice is not None:
            self._cache.move_to_end(key)
        return choice

    def choices(self) -> dict:
        """``{key: label}`` of the remembered choices."""
        return dict(self._cache)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
