"""The settings module: one place for every switch, env variables read once,
setters, a context manager that restores."""
import os
import subprocess
import sys

import pytest

import overlock
from overlock import config
from overlock.ops.autotune import AutoTuner

DEFAULTS = dict(fast_inference=True, natten=True, igemm=True, contmix='auto',
                cpu_conv='auto', reference=False, kernels='auto')


def test_defaults_and_public_names():
    assert overlock.get_options() == DEFAULTS
    assert overlock.options is config.options


def test_options_sets_and_restores_even_after_an_error():
    with overlock.options(fast_inference=False, contmix='slices') as now:
        assert now['fast_inference'] is False and now['contmix'] == 'slices'
        assert config.settings.contmix == 'slices'
        with overlock.options(contmix='band'):  # nests
            assert config.settings.contmix == 'band'
        assert config.settings.contmix == 'slices'
    assert overlock.get_options() == DEFAULTS
    with pytest.raises(RuntimeError, match='boom'):
        with overlock.options(cpu_conv='aten'):
            raise RuntimeError('boom')
    assert overlock.get_options() == DEFAULTS


def test_bad_options_are_clear_errors_and_change_nothing():
    with pytest.raises(ValueError, match=r"Unknown OverLoCK option 'fast'"):
        overlock.set_options(fast=True)
    with pytest.raises(ValueError, match=r"cpu_conv must be one of"):
        overlock.set_options(contmix='band', cpu_conv='fast')
    with pytest.raises(ValueError, match='must be True or False'):
        overlock.set_options(natten='no')
    assert overlock.get_options() == DEFAULTS  # contmix was not set either
    # the shorthands too ('off' is truthy: it must not turn a switch on)
    for setter in (overlock.set_reference_mode, overlock.set_fast_inference):
        with pytest.raises(ValueError, match="must be True or False, got "
                           "'off'"):
            setter('off')
    with pytest.raises(ValueError, match="natten must be True or False"):
        overlock.set_accelerators(natten='no')
    assert overlock.get_options() == DEFAULTS


def test_shorthand_setters():
    try:
        overlock.set_fast_inference(False)
        overlock.set_accelerators(natten=False)
        overlock.set_contmix_mode('band')
        overlock.set_cpu_conv_mode('cl')
        overlock.set_reference_mode(True)
        assert overlock.get_options() == dict(
            fast_inference=False, natten=False, igemm=True, contmix='band',
            cpu_conv='cl', reference=True, kernels='auto')
    finally:
        overlock.set_options(**DEFAULTS)


def _options_in_subprocess(**env):
    code = 'import overlock; print(overlock.get_options())'
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_environment_variables_are_read_at_import():
    proc = _options_in_subprocess(
        OVERLOCK_DISABLE_FAST_INFERENCE='1', OVERLOCK_DISABLE_NATTEN='yes',
        OVERLOCK_DISABLE_IGEMM='0', OVERLOCK_CONTMIX='Band',
        OVERLOCK_CPU_CONV='aten', OVERLOCK_REFERENCE='on',
        OVERLOCK_KERNELS='torch')
    assert proc.returncode == 0, proc.stderr
    assert eval(proc.stdout) == dict(
        fast_inference=False, natten=False, igemm=True, contmix='band',
        cpu_conv='aten', reference=True, kernels='torch')


def test_bad_environment_variable_names_the_variable():
    proc = _options_in_subprocess(OVERLOCK_CONTMIX='fastest')
    assert proc.returncode != 0
    assert "OVERLOCK_CONTMIX='fastest'" in proc.stderr
    assert "'auto', 'band', 'slices'" in proc.stderr


def test_auto_tuner_times_once_per_key_and_is_bounded():
    calls = []
    tuner = AutoTuner('test', maxsize=2)

    def cands(fast):
        return lambda: [('a', lambda: calls.append('a')),
                        ('b', lambda: calls.append('b') or sum(range(fast)))]

    assert tuner.choose(1, cands(0)) in ('a', 'b')
    n = len(calls)
    assert n == 6  # one warm-up + two timed runs per candidate
    tuner.choose(1, cands(0))
    assert len(calls) == n  # remembered
    tuner.choose(2, cands(10 ** 6))
    assert tuner.choose(2, cands(0)) == 'a'  # b was slow for key 2
    tuner.choose(3, cands(0))
    assert len(tuner) == 2  # key 1 (least recently used) dropped
    before = len(calls)
    tuner.choose(1, cands(0))
    assert len(calls) == before + 6  # timed again
