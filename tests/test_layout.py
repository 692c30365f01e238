"""The package layout rules (README, "Layout"), checked on the source.

* ``overlock/`` imports only the standard library, torch and timm at import
  time, and never (not even lazily) an OpenMMLab package;
* ``overlock_mm`` imports mmengine and ``overlock``, never mmdet, mmseg,
  mmpretrain or the registering packages (matplotlib lazily, for plots);
* ``mmdet_overlock`` / ``mmseg_overlock`` / ``mmpretrain_overlock`` import
  their framework, ``overlock_mm`` and ``overlock`` only, never each other;
* no import cycle between modules (module-level imports);
* no file in ``overlock/`` over 600 lines;
* importing a registering package changes nothing else.
"""
import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT

PACKAGES = ('overlock', 'overlock_mm', 'mmdet_overlock', 'mmseg_overlock',
            'mmpretrain_overlock')
OPENMMLAB = ('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain')
#: optional accelerators, imported lazily inside functions only
OPTIONAL = ('natten', 'depthwise_conv2d_implicit_gemm', 'numpy', 'triton')
#: modules that only load lazily (never imported at module level), and the
#: optional package each may import at its top
LAZY_MODULES = {'overlock.ops.triton_contmix': ('triton', ),
                'overlock.ops.triton_dwconv': ('triton', )}


def _modules():
    """``{module name: path}`` of every module of the packages."""
    out = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, pkg)):
            for f in files:
                if f.endswith('.py'):
                    path = os.path.join(dirpath, f)
                    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
                    name = rel[:-len('.__init__')] \
                        if rel.endswith('.__init__') else rel
                    out[name] = path
    return out


MODULES = _modules()


def _imports(name, path):
    """``[(imported module, at import time)]`` of one file: an import runs
    at import time unless it sits inside a function."""
    tree = ast.parse(open(path).read(), path)
    is_pkg = path.endswith('__init__.py')
    base = name.split('.') if is_pkg else name.split('.')[:-1]
    found = []

    def visit(node, top):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend((a.name, top) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    mod = '.'.join(base[:len(base) - child.level + 1] +
                                   ([child.module] if child.module else []))
                else:
                    mod = child.module
                found.append((mod, top))
                for a in child.names:  # from . import fused
                    sub = f'{mod}.{a.name}'
                    if sub in MODULES:
                        found.append((sub, top))
            visit(child, top and not isinstance(
                child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(tree, True)
    return found


def _top(mod):
    return mod.split('.')[0]


def _stdlib(mod):
    return _top(mod) in sys.stdlib_module_names


@pytest.mark.parametrize('name', sorted(n for n in MODULES
                                        if _top(n) == 'overlock'))
def test_core_imports_only_torch_timm_stdlib(name):
    for mod, top in _imports(name, MODULES[name]):
        assert _top(mod) not in OPENMMLAB + PACKAGES[1:], (name, mod)
        if top:
            assert mod not in LAZY_MODULES, (name, mod)
            assert _stdlib(mod) or _top(mod) in (
                'torch', 'timm', 'overlock') + LAZY_MODULES.get(name, ()), \
                (name, mod)
        else:
            assert _stdlib(mod) or _top(mod) in (
                'torch', 'timm', 'overlock') + OPTIONAL, (name, mod)


#: what an adapter may import lazily (inside functions) besides the above
ADAPTER_LAZY = {'overlock_mm': ('matplotlib', )}


@pytest.mark.parametrize('name,allowed', [
    ('overlock_mm', ('mmengine', 'overlock', 'overlock_mm', 'torch')),
    ('mmdet_overlock', ('mmdet', 'overlock', 'overlock_mm', 'mmdet_overlock',
                        'torch')),
    ('mmseg_overlock', ('mmseg', 'overlock', 'overlock_mm')),
    ('mmpretrain_overlock', ('mmpretrain', 'overlock', 'overlock_mm',
                             'mmpretrain_overlock', 'torch')),
])
def test_adapters_import_what_they_may(name, allowed):
    mods = [n for n in MODULES if _top(n) == name]
    assert mods
    for m in mods:
        for mod, top in _imports(m, MODULES[m]):
            assert _stdlib(mod) or _top(mod) in allowed or (
                not top and _top(mod) in ADAPTER_LAZY.get(name, ())), (m, mod)


def test_no_import_cycles():
    graph = {n: {mod for mod, top in _imports(n, p) if top and mod in MODULES
                 and mod != n}
             for n, p in MODULES.items()}
    # a package's __init__ imports its submodules: that edge is not a cycle
    for n, deps in graph.items():
        deps -= {d for d in deps if n.startswith(d + '.')}
    state = {}

    def visit(n, stack):
        state[n] = 'open'
        for d in graph[n]:
            if state.get(d) == 'open':
                raise AssertionError(' -> '.join(stack + [n, d]))
            if d not in state:
                visit(d, stack + [n])
        state[n] = 'done'

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def test_the_checker_sees_violations(tmp_path):
    """The rules above can fail: a lazy mmdet import and a relative import
    are found."""
    path = tmp_path / 'mod.py'
    path.write_text('import torch\nfrom . import fused\n\n\ndef f():\n'
                    '    import mmdet\n')
    found = _imports('overlock.mod', str(path))
    assert ('mmdet', False) in found and ('torch', True) in found
    assert ('overlock.fused', True) in found


def test_core_files_stay_short():
    for name, path in MODULES.items():
        if _top(name) in ('overlock', 'mmpretrain_overlock'):
            assert sum(1 for _ in open(path)) <= 600, name


def _run(code):
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_importing_overlock_loads_no_openmmlab_and_is_quiet():
    proc = _run(
        'import sys, overlock\n'
        'overlock.OverLoCK("xt")\n'
        f'bad = [m for m in sys.modules if m.split(".")[0] in {OPENMMLAB}]\n'
        'assert not bad, bad\n')
    assert proc.stdout == '' and proc.stderr == ''


@pytest.mark.parametrize('pkg,registry,others,models,metrics', [
    ('mmdet_overlock', 'mmdet', ('mmseg', 'mmpretrain'),
     {'OverLoCK', 'Float32RoIExtractor', 'Float32RPNHead'}, set()),
    ('mmseg_overlock', 'mmseg', ('mmdet', 'mmpretrain'), {'OverLoCK'}, set()),
    ('mmpretrain_overlock', 'mmpretrain', ('mmdet', 'mmseg'),
     {'OverLoCK', 'OverLoCKClassifier'}, {'ExpectedCalibrationError'}),
])
def test_registering_changes_nothing_else(pkg, registry, others, models,
                                          metrics):
    # mmpretrain's and mmdet's own models and metrics register when their
    # packages load (mmpretrain.models itself imports mmdet when it is
    # installed; mmdet_overlock subclasses mmdet's RoI extractor and RPN
    # head): they are loaded first, so that only what ours adds is compared
    preload = {'mmpretrain': 'import mmpretrain.models, mmpretrain.evaluation',
               'mmdet': 'import mmdet.models'}.get(registry, '')
    proc = _run(f'''
import sys, torch
import overlock  # (torch modules it loads register their own safe types)
from mmengine.logging import HistoryBuffer
getstate = HistoryBuffer.__dict__.get("__getstate__")
safe = list(torch.serialization.get_safe_globals())
import {registry}.registry
{preload}
loaded = set(sys.modules)
before = set({registry}.registry.MODELS.module_dict)
metrics = set({registry}.registry.METRICS.module_dict)
import {pkg}
assert set({registry}.registry.MODELS.module_dict) - before == {models}
assert set({registry}.registry.METRICS.module_dict) - metrics == {metrics}
assert HistoryBuffer.__dict__.get("__getstate__") is getstate
assert list(torch.serialization.get_safe_globals()) == safe
new = {{m.split(".")[0] for m in set(sys.modules) - loaded}}
for other in {others}:
    assert other not in new and other + "_overlock" not in new, other
''')
    assert 'Traceback' not in proc.stderr


def test_registration_clash_is_an_error():
    from mmengine.registry import Registry

    from overlock_mm import OverLoCKBackbone, register_backbone
    reg = Registry('clash test')
    register_backbone(reg)
    register_backbone(reg)  # the same class again: nothing happens
    assert reg.get('OverLoCK') is OverLoCKBackbone
    other = Registry('clash test 2')

    @other.register_module(name='OverLoCK')
    class Impostor:
        pass

    with pytest.raises(KeyError, match="already has a module named 'OverLoCK'"):
        register_backbone(other)
    assert other.get('OverLoCK') is Impostor  # nothing replaced
    register_backbone(other, name='OverLoCKBackbone')
    assert other.get('OverLoCKBackbone') is OverLoCKBackbone
