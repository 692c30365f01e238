"""``overlock.compile_kwargs``: torch.compile arguments with inductor's
layout optimisation off (it would make the depthwise convolutions
channels-last on CUDA, ~9x slower in cuDNN)."""
import pytest
import torch

import overlock
from overlock.compiler import INDUCTOR_OPTIONS


def test_default_and_modes_become_options():
    assert overlock.compile_kwargs() == dict(options=INDUCTOR_OPTIONS)
    assert INDUCTOR_OPTIONS == {'layout_optimization': False}
    assert overlock.compile_kwargs(mode='default', dynamic=True) == dict(
        dynamic=True, options=INDUCTOR_OPTIONS)
    got = overlock.compile_kwargs(mode='reduce-overhead')
    assert got == dict(options={'layout_optimization': False,
                                'triton.cudagraphs': True})
    got = overlock.compile_kwargs(mode='max-autotune', fullgraph=True)
    assert 'mode' not in got and got['fullgraph'] is True
    assert got['options']['max_autotune'] is True
    assert got['options']['layout_optimization'] is False


def test_options_given_win_and_other_backends_are_untouched():
    got = overlock.compile_kwargs(options={'layout_optimization': True,
                                           'epilogue_fusion': False})
    assert got['options'] == {'layout_optimization': True,
                              'epilogue_fusion': False}
    assert overlock.compile_kwargs(backend='aot_eager', mode='x') == dict(
        backend='aot_eager', mode='x')


def test_mode_and_options_is_torch_compiles_error_with_the_fix():
    with pytest.raises(ValueError, match='list_mode_options'):
        overlock.compile_kwargs(mode='max-autotune', options={})


def test_torch_compile_accepts_them():
    """The arguments are ones torch.compile takes (it checks options
    against inductor's config when it is called)."""
    fn = torch.compile(lambda x: x * 2,
                       **overlock.compile_kwargs(mode='max-autotune'))
    assert callable(fn)
    with pytest.raises(RuntimeError, match='Unexpected optimization option'):
        torch.compile(lambda x: x, options={'no_such_option': 1})
