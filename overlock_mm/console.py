"""A brief console for the mm runner: progress and results on the terminal,
everything else only in the work dir's log file.

mmengine's logger writes the same records to the console and to the log
file. :func:`runner_class` returns a :class:`~mmengine.runner.Runner`
subclass whose logger keeps the file complete but lets through to the
terminal only what a person watching a run needs: training / validation /
test progress, checkpoints, evaluation results, warnings and errors. The
system-environment and config dumps, the per-parameter ``paramwise_options``
lines, the hook table and mmengine's own deprecation notices stay in the
file. Used by ``tools/train.py`` / ``tools/test.py --console brief``.
"""
import logging

from .runner import OverLoCKRunner

__all__ = ['BriefConsoleFilter', 'BriefConsoleRunner', 'runner_class',
           'CONSOLE_MODES']

#: values of the tools' ``--console`` option
CONSOLE_MODES = ('full', 'brief')

#: messages (after leading white space) that go to the log file only
FILE_ONLY_PREFIXES = (
    'paramwise_options',
    'Config:',
    '-' * 20,  # the system-environment dump starts with a ruler
    'System environment',
    'Runtime environment',
    'Hooks will be executed',
    'Distributed training is not used',
    'Load checkpoint from',
    'load model from',
    'Exp name:',
    '"FileClient" will be deprecated',
    '"HardDiskBackend" is the alias',
)


class BriefConsoleFilter(logging.Filter):
    """Drops the records whose message starts with one of
    :data:`FILE_ONLY_PREFIXES` (errors always pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage().lstrip()
        return not message.startswith(FILE_ONLY_PREFIXES)


def _console_handlers(logger: logging.Logger):
    return [h for h in logger.handlers
            if isinstance(h, logging.StreamHandler)
            and not isinstance(h, logging.FileHandler)]


class BriefConsoleRunner(OverLoCKRunner):
    """:class:`~overlock_mm.runner.OverLoCKRunner` whose console handler
    carries a :class:`BriefConsoleFilter` (the log file is unchanged)."""

    def build_logger(self, *args, **kwargs):
        logger = super().build_logger(*args, **kwargs)
        for handler in _console_handlers(logger):
            if not any(isinstance(f, BriefConsoleFilter)
                       for f in handler.filters):
                handler.addFilter(BriefConsoleFilter())
        return logger


def runner_class(console: str = 'full'):
    """The runner class for a ``--console`` mode.

    Args:
        console (str): ``'full'`` (:class:`~overlock_mm.runner.OverLoCKRunner`,
            mmengine's console) or ``'brief'`` (:class:`BriefConsoleRunner`).
            Defaults to ``'full'``.

    Raises:
        ValueError: an unknown mode.
    """
    if console not in CONSOLE_MODES:
        raise ValueError(f'--console must be one of {CONSOLE_MODES}, got '
                         f'{console!r}')
    return OverLoCKRunner if console == 'full' else BriefConsoleRunner
