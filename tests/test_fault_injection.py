"""SIGKILL at each kill site of a PPO-with-recovery run (during steps, during asynchronous saves,
in the export; delays drawn at random), then the same command again, until it finishes: it ends
bit-identical to an uninterrupted run. And every stage's toy preset, run twice, gives
bit-identical metrics and parameters (determinism on CPU).

All runs are children forked from one fresh Python (tests/forked_runs.py); a child kills itself
at the point `DEEPALIGN_KILL_AT` names (deepalign/train/faults.py), a real SIGKILL mid-write.
"""

import importlib.util
import json
import pathlib
import random

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('forked_runs', ROOT / 'tests' / 'forked_runs.py')
forked_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forked_runs)

pytestmark = pytest.mark.slow

TINY_MODEL = ['--config.model.hidden_size=32', '--config.model.num_layers=1',
              '--config.model.num_heads=2', '--config.model.num_kv_heads=2',
              '--config.model.intermediate_size=64']
TINY_DATA = ['--config.data.language=tiny', '--config.data.num_train=64', '--config.data.num_eval=16',
             '--config.data.max_len=24']
QUIET = ['--config.train.eval_every=0', '--config.train.log_every=1']
SFT = ['--config=configs/sft.py:toy', *TINY_DATA, *TINY_MODEL, *QUIET, '--config.train.num_steps=3',
       '--config.train.batch_size=8', '--config.sft.harm_eval=False', '--config.sft.eval_batches=1']
RM = ['--config=configs/reward_model.py:toy', *TINY_DATA, *TINY_MODEL, *QUIET,
      '--config.train.num_steps=3', '--config.train.batch_size=8']
NUM_RL_STEPS = 6  # checkpoints at 2, 4, 6


def _rl(config: str, sft, rm) -> list[str]:
  return [f'--config=configs/{config}.py:toy', *TINY_DATA, *QUIET, f'--config.model.init_from={sft}',
          f'--config.rl.reward_from={rm}', '--config.rl.harm_eval=False',
          '--config.rl.max_new_tokens=6', f'--config.train.num_steps={NUM_RL_STEPS}',
          '--config.train.batch_size=4', '--config.train.checkpoint_every=2',
          '--config.train.async_checkpointing=True']


PPO_RECOVERY_EXTRA = ['--config.recovery.batch_size=2', '--config.recovery.max_depth=3',
                      '--config.ppo.epochs=1', '--config.ppo.minibatches=2']


def _kill_points(seed: int = 0) -> list[str]:
  """One kill point per distinct path, in the order a run meets them (steps grow, so each resumed
  run still reaches its point): after a step at once (no checkpoint yet) and a random few ms into
  the next step, during the asynchronous save of a checkpoint (mid-run and the last one), before a
  save, after a log line (and a few ms into the replayed step after it), the final wait and both
  sides of the export: 10 kills, as issue 18 asks (>= 10)."""
  rng = random.Random(seed)
  n = NUM_RL_STEPS
  return ['after_step:1', f'after_save:2:{rng.randint(0, 40)}', f'after_step:3:{rng.randint(0, 80)}',
          'before_save:4', 'after_log:5', f'after_step:5:{rng.randint(0, 80)}',
          f'after_save:{n}:{rng.randint(0, 40)}', f'after_wait:{n}',
          f'before_finish:{n}', f'after_finish:{n}']


def _main(argv, workdir, **env):
  return {'entry': 'deepalign.main', 'argv': [*argv, f'--workdir={workdir}'], 'env': env}


def _final(workdir: pathlib.Path) -> tuple[dict, list]:
  """(params of the last checkpoint as numpy, metrics rows without timings)."""
  state = ocp.StandardCheckpointer().restore(workdir / 'checkpoints' / str(NUM_RL_STEPS) / 'state')
  rows = [json.loads(l) for l in (workdir / 'metrics.jsonl').read_text().splitlines()]
  return (jax.tree.map(np.asarray, state['params']),
          [{k: v for k, v in r.items() if not k.startswith('perf/')} for r in rows])


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('faults')
  # The RL runs start from the first SFT and RM runs of the determinism pairs (no extra runs).
  sft, rm = tmp / 'sft_1', tmp / 'reward_model_1'
  ppo_rec = _rl('ppo_recovery', sft, rm) + PPO_RECOVERY_EXTRA
  kills = _kill_points()
  # determinism of every stage's toy preset: each twice. PPO with recovery's second run is the
  # killed-and-resumed one: `straight` and `killed` are the same command.
  twice = {'sft': SFT, 'reward_model': RM, 'dpo': ['--config=configs/dpo.py:toy', *TINY_DATA, *QUIET,
                                                   f'--config.model.init_from={sft}',
                                                   '--config.train.num_steps=2',
                                                   '--config.train.batch_size=4'],
           'grpo': _rl('grpo', sft, rm) + ['--config.train.num_steps=2', '--config.grpo.group_size=2'],
           'linear_regression': ['--config=configs/linear_regression.py', '--config.train.num_steps=4']}
  commands = [_main(SFT, sft), _main(RM, rm), _main(ppo_rec, tmp / 'straight')]
  commands += [_main(ppo_rec, tmp / 'killed', DEEPALIGN_KILL_AT=k) for k in kills]
  commands += [_main(ppo_rec, tmp / 'killed')]
  for name, argv in twice.items():
    commands += [_main(argv, tmp / f'{name}_{i}') for i in (1, 2) if tmp / f'{name}_{i}' not in (sft, rm)]
  results = forked_runs.run(commands, timeout=1200)
  for command, result in zip(commands, results):
    expected = -9 if command['env'].get('DEEPALIGN_KILL_AT') else 0
    assert result['rc'] == expected, (command, result['stderr'][-3000:])
  return tmp, kills, list(twice)


def test_sigkilled_ppo_recovery_resumes_bit_identical(runs):
  tmp, kills, _ = runs
  assert len(kills) >= 10 and len({k.split(':')[0] for k in kills}) == 7  # every site
  params, rows = _final(tmp / 'killed')
  straight_params, straight_rows = _final(tmp / 'straight')
  jax.tree.map(np.testing.assert_array_equal, straight_params, params)
  assert [r['step'] for r in rows] == list(range(1, NUM_RL_STEPS + 1))
  assert rows == straight_rows
  assert (tmp / 'killed' / 'export' / 'config.json').is_file()
  assert not list((tmp / 'killed' / 'checkpoints').glob('*orbax-checkpoint-tmp*'))


def test_every_stage_is_deterministic(runs):
  tmp, _, stages = runs
  a, rows_a = _final(tmp / 'straight')
  b, rows_b = _final(tmp / 'killed')  # the same command, killed at each kill point on the way
  jax.tree.map(np.testing.assert_array_equal, a, b)
  assert rows_a == rows_b
  for stage in stages:
    first, second = tmp / f'{stage}_1', tmp / f'{stage}_2'
    strip = lambda d: [{k: v for k, v in json.loads(l).items() if not k.startswith('perf/')}
                       for l in (d / 'metrics.jsonl').read_text().splitlines()]
    assert strip(first) == strip(second), stage
    step = max(int(p.name) for p in (first / 'checkpoints').iterdir() if p.name.isdigit())
    load = lambda d: jax.tree.map(np.asarray, ocp.StandardCheckpointer().restore(
        d / 'checkpoints' / str(step) / 'state')['params'])
    jax.tree.map(np.testing.assert_array_equal, load(first), load(second))
