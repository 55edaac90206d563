"""launch/sweep.py and launch/summarize.py: names, up-front checks, a 2 x 2 sweep end to end."""

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest

from deepalign.errors import UserError
from launch import summarize, sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASE = os.path.join(REPO, 'configs', 'linear_regression.py')
# The smallest stage: a few steps, a checkpoint at 2 and at the end.
COMMON = {'train.num_steps': '4', 'train.log_every': '2', 'train.eval_every': '0',
          'train.checkpoint_every': '2', 'train.async_checkpointing': 'False'}


def test_product_and_names():
  runs = sweep.product({'recovery.coef': (0.5, 1, 2), 'seed': (0, 1)})
  assert runs[:3] == [{'recovery.coef': 0.5, 'seed': 0}, {'recovery.coef': 0.5, 'seed': 1},
                      {'recovery.coef': 1, 'seed': 0}]
  assert len(runs) == 6
  names = [sweep.run_name(r) for r in runs]
  assert names[0] == 'recovery.coef=0.5__seed=0'
  assert len(set(names)) == 6 and names == [sweep.run_name(r) for r in runs]  # unique, stable
  odd = sweep.run_name({'data.builder': 'a b/c', 'rl.harm_eval_depths': (0, 3)})
  assert odd == 'data.builder=a-b-c__rl.harm_eval_depths=-0-3' and '/' not in odd
  long = sweep.run_name({f'key{i}': 'x' * 20 for i in range(8)})
  assert len(long) <= 96 and long != sweep.run_name({f'key{i}': 'y' * 20 for i in range(8)})
  assert sweep.run_name({}) == 'base'


def test_unknown_key_or_bad_value_stops_the_whole_sweep(tmp_path):
  good = {'optimizer.learning_rate': 0.1}
  with pytest.raises(UserError, match=r"sweep run 1 .*unknown config key 'optimizer.learning_rat'.*"
                                      r'nearest valid keys: optimizer.learning_rate'):
    sweep.expand(BASE, [good, {'optimizer.learning_rat': 0.1}], str(tmp_path / 's'))
  with pytest.raises(UserError, match=r"bad value 'abc' for config key 'train.num_steps'"):
    sweep.expand(BASE, [good], str(tmp_path / 's'), {'train.num_steps': 'abc'})
  with pytest.raises(UserError, match='same overrides twice'):
    sweep.expand(BASE, [good, dict(good)], str(tmp_path / 's'))
  # The command line: one error line, exit status 2, nothing written.
  sweep_file = tmp_path / 'lr.py'
  sweep_file.write_text("def sweep():\n  return [{'seed': 0}, {'seed': 1, 'train.num_stepz': 3}]\n")
  proc = subprocess.run([sys.executable, '-m', 'launch.sweep', f'--config={BASE}', f'--sweep={sweep_file}',
                         f'--workdir={tmp_path / "s"}'], cwd=REPO, capture_output=True, text=True,
                        check=False, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.startswith('error: sweep run 1') and 'train.num_steps' in proc.stderr
  assert len(proc.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 's').exists()


def test_dry_run_prints_one_command_per_run(tmp_path):
  sweep_file = tmp_path / 'lr.py'
  sweep_file.write_text('from launch.sweep import product\n'
                        "def sweep():\n  return product({'optimizer.learning_rate': (0.05, 0.1), 'seed': (0, 1)})\n")
  proc = subprocess.run([sys.executable, '-m', 'launch.sweep', f'--config={BASE}', f'--sweep={sweep_file}',
                         '--workdir=gs://bucket/lr', '--dry_run',
                         '--tpu=--accelerator_type=v5e-8 --zone=us-west4-a', '--',
                         '--config.train.num_steps=4'],
                        cwd=REPO, capture_output=True, text=True, check=False,
                        env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 4
  assert lines[0] == ('python -m launch.tpu --name=lr-0 --config=' + BASE +
                      ' --workdir=gs://bucket/lr/optimizer.learning_rate=0.05__seed=0'
                      ' --accelerator_type=v5e-8 --zone=us-west4-a -- --config.train.num_steps=4'
                      ' --config.optimizer.learning_rate=0.05 --config.seed=0')
  assert not (tmp_path / 'lr').exists()


def _final(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f][-1]


@pytest.mark.slow
def test_two_values_two_seeds_end_to_end(tmp_path):
  """In this process (one jax start-up for all runs): the 2 x 2 sweep, its table and plot; then a
  rerun with a failing run put first: it is recorded and the sweep goes on, skipping the finished
  runs and resuming an interrupted one."""
  workdir = str(tmp_path / 'sweep')
  grid = sweep.product({'optimizer.learning_rate': (0.05, 0.1), 'seed': (0, 1)})
  runs = sweep.expand(BASE, grid, workdir, COMMON)
  logs = []
  manifest = sweep.run_sweep(BASE, runs, workdir, in_process=True, log=logs.append)
  assert [r['status'] for r in manifest['runs']] == ['finished'] * 4, manifest
  with open(os.path.join(workdir, 'sweep.json')) as f:
    assert json.load(f)['runs'][3]['overrides'] == {'optimizer.learning_rate': 0.1, 'seed': 1}
  finals = [_final(r.workdir) for r in runs]
  assert all(f['step'] == 4 for f in finals)
  assert len({f['train/loss'] for f in finals}) == 4  # the overrides reached the runs

  written = summarize.summarize(workdir, 'eval/mse', x='optimizer.learning_rate', columns=['train/loss'])
  with open(written['csv']) as f:
    rows = list(csv.DictReader(f))
  assert [r['name'] for r in rows] == [r.name for r in runs]
  assert [float(r['train/loss']) for r in rows] == pytest.approx([f['train/loss'] for f in finals])
  with open(written['markdown']) as f:
    table = f.read()
  assert table.count('| finished |') == 4 and '| 0.05 | ' in table and '| 0.1 | ' in table
  with open(written['plot'], 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  # Run 2 interrupted after its step-2 checkpoint (as a kill leaves it); a run that the train loop
  # refuses (past the up-front checks) first.
  shutil.rmtree(os.path.join(runs[2].workdir, 'checkpoints', '4'))
  rerun = sweep.expand(BASE, [{'train.batch_size': -8}, *grid], workdir, COMMON)
  logs.clear()
  manifest = sweep.run_sweep(BASE, rerun, workdir, in_process=True, log=logs.append)
  assert [r['status'] for r in manifest['runs']] == ['failed'] + ['finished'] * 4
  assert manifest['runs'][0]['returncode'] == 2
  assert manifest['runs'][0]['error'].startswith('error: config.train.batch_size=-8 must be >= 0')
  assert [line.rsplit(': ', 1)[1] for line in logs if 'skipped' in line or 'running' in line] == [
      'running', 'finished, skipped', 'finished, skipped', 'running', 'finished, skipped'], logs
  assert [r['attempts'] for r in manifest['runs']] == [1, 1, 1, 2, 1]
  resumed = _final(runs[2].workdir)
  assert resumed == {**finals[2], 'perf/steps_per_s': resumed['perf/steps_per_s']}  # exact resume
