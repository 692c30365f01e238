"""How tools/train.py and tools/test.py end a distributed run
(overlock_mm.runtime.distributed_run / exit_program / run_program), in real
gloo groups of one process."""
import os
import random
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

pytest.importorskip('mmengine')

PRELUDE = textwrap.dedent('''
    import logging, os, sys
    import torch, torch.distributed as dist
    from overlock_mm.runtime import (distributed_run, exit_program,
                                     run_program)
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT='{port}',
                      RANK='0', WORLD_SIZE='1')
''')


def _script(body):
    port = random.randint(20000, 40000)
    return PRELUDE.format(port=port) + textwrap.dedent(body)


def _run(body, tmp_path):
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore')
    return subprocess.run([sys.executable, '-c', _script(body)], cwd=tmp_path,
                          env=env, timeout=300, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_gloo_run_ends_without_interpreter_teardown(tmp_path):
    # a DDP model and a last broadcast of Python tensors: what leaves gloo
    # worker threads behind in the tools
    proc = _run('''
        import atexit
        log = logging.getLogger('t')
        log.addHandler(logging.FileHandler('run.log'))
        log.setLevel(logging.INFO)
        atexit.register(lambda: print('interpreter teardown ran'))
        dist.init_process_group('gloo')
        with distributed_run():
            model = torch.nn.parallel.DistributedDataParallel(
                torch.nn.Linear(3, 3))
            box = [{'bbox_mAP': 0.5}]
            dist.broadcast_object_list(box, src=0)
        assert not dist.is_initialized()
        log.info('metrics %s', box[0])
        print('done', end='')  # no newline: flushed by exit_program
        exit_program(3)
        print('not reached')
    ''', tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == 'done'  # flushed, and atexit handlers skipped
    assert (tmp_path / 'run.log').read_text() == \
        "metrics {'bbox_mAP': 0.5}\n"


def test_failed_run_destroys_the_group_and_raises(tmp_path):
    proc = _run('''
        dist.init_process_group('gloo')
        try:
            with distributed_run():
                raise KeyError('broken config')
        except KeyError as e:
            print('raised', e)
        print('initialized', dist.is_initialized())
    ''', tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split('\n')[:2] == [
        "raised 'broken config'", 'initialized False']


def test_runs_without_a_group_exit_normally(tmp_path):
    proc = _run('''
        import atexit
        atexit.register(lambda: print('teardown'))
        with distributed_run():
            pass
        exit_program(4)
    ''', tmp_path)
    assert proc.returncode == 4, proc.stderr
    assert proc.stdout == 'teardown\n'


def test_program_failing_after_a_gloo_run_exits_1_with_its_traceback(
        tmp_path):
    proc = _run('''
        import atexit
        atexit.register(lambda: print('teardown'))

        def main():
            dist.init_process_group('gloo')
            with distributed_run():
                model = torch.nn.parallel.DistributedDataParallel(
                    torch.nn.Linear(3, 3))
                raise RuntimeError('CUDA out of memory (pretend)')

        run_program(main)
    ''', tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.rstrip().endswith(
        'RuntimeError: CUDA out of memory (pretend)')
    assert 'Traceback' in proc.stderr and 'terminate' not in proc.stderr
    assert proc.stdout == ''  # no interpreter teardown


def test_program_without_a_group_runs_as_usual(tmp_path):
    proc = _run('''
        def main():
            raise ValueError('bad config')

        run_program(main)
    ''', tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.rstrip().endswith('ValueError: bad config')
    proc = _run('''
        import atexit
        atexit.register(lambda: print('teardown'))
        run_program(lambda: None)
    ''', tmp_path)
    assert (proc.returncode, proc.stdout) == (0, 'teardown\n')
