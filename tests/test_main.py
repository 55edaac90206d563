"""The command line: config errors are one line + exit 2 and leave no workdir behind."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LINREG = 'configs/linear_regression.py'


def _run(*args: str, workdir=None, env=None) -> subprocess.CompletedProcess:
  cmd = [sys.executable, '-m', 'deepalign.main', *args]
  if workdir is not None:
    cmd.append(f'--workdir={workdir}')
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=None if env is None else {**os.environ, **env})


def _assert_one_line_error(result, *fragments: str) -> str:
  assert result.returncode == 2, result.stderr
  lines = [l for l in result.stderr.splitlines() if l.strip()]
  assert len(lines) == 1 and lines[0].startswith('error: '), result.stderr
  assert 'Traceback' not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]
  return lines[0]


@pytest.mark.parametrize('override, fragments', [
    ('--config.optimizer.learning_rat=3', ("unknown config key 'optimizer.learning_rat'",
                                            'optimizer.learning_rate')),
    ('--config.trian.num_steps=3', ("unknown config key 'trian.num_steps'", 'train.num_steps')),
    ('--config.optimizer.learning_rate=fast', ("config key 'optimizer.learning_rate'", 'float')),
    ('--config.train.num_steps=1.5', ("config key 'train.num_steps'", 'int')),
    ('--config.train.async_checkpointing=maybe', ("'train.async_checkpointing'", 'bool')),
])
def test_bad_override_is_one_line_and_exit_2(tmp_path, override, fragments):
  workdir = tmp_path / 'run'
  _assert_one_line_error(_run(f'--config={LINREG}', override, workdir=workdir), *fragments)
  assert not workdir.exists()


def test_unknown_preset_lists_the_valid_ones(tmp_path):
  for config in ('configs/linear_regression.py:huge', 'configs/sft.py:gemma9000'):
    line = _assert_one_line_error(_run(f'--config={config}', workdir=tmp_path / 'run'),
                                  'unknown preset')
    assert 'toy' in line
  assert not (tmp_path / 'run').exists()


def test_missing_file_workdir_and_flag_typos(tmp_path):
  _assert_one_line_error(_run('--config=configs/nope.py', workdir=tmp_path), 'configs/nope.py')
  _assert_one_line_error(_run(f'--config={LINREG}'), '--workdir')
  _assert_one_line_error(_run(f'--config={LINREG}', '--workdirr=x', workdir=tmp_path), 'workdir')


def test_user_error_at_run_time_is_one_line(tmp_path):
  result = _run(f'--config={LINREG}', '--config.optimizer.schedule=cosinus', workdir=tmp_path / 'w')
  _assert_one_line_error(result, 'config.optimizer.schedule', 'cosine')


def test_runs_and_writes_the_resolved_config(tmp_path):
  workdir = tmp_path / 'w'
  cache = tmp_path / 'xla_cache'
  result = _run(f'--config={LINREG}', '--config.train.num_steps=10', '--config.train.log_every=5',
                '--config.optimizer.learning_rate=0.02', f'--config.compilation_cache_dir={cache}',
                workdir=workdir, env={'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'})
  assert result.returncode == 0, result.stderr[-3000:]
  assert cache.is_dir() and os.listdir(cache)  # the compiled programs, for the next run
  config = json.loads((workdir / 'config.json').read_text())
  assert config['optimizer']['learning_rate'] == 0.02 and config['train']['num_steps'] == 10
  assert config['stage'] == 'linear_regression'
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in rows] == [5, 10]
  assert 'step 10/10' in result.stderr and 'steps/s' in result.stderr and 'ETA' in result.stderr
  assert not [f for f in os.listdir(workdir) if f.startswith('.config.json')]  # no temp left


def test_real_preset_without_its_checkpoint_is_one_line(tmp_path):
  result = _run('--config=configs/dpo.py:llama3_8b', '--config.model.hf_dir=/nonexistent/llama',
                workdir=tmp_path / 'w')
  _assert_one_line_error(result, 'config.model.hf_dir', '/nonexistent/llama')
  assert not (tmp_path / 'w').exists()
