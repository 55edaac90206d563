"""A multi-host run is the one-host run: the PPO + recovery toy stage on 2 processes x 4 CPU devices
(jax.distributed on localhost) against 1 process x 8 devices, through `deepalign.main.run`.

Each process reads only its block of every global batch and all build the same 8-device mesh, so
the losses of every step and the final parameters agree (<= 1e-5); a multi-process run stopped
after its step-2 checkpoint and re-run resumes to the same parameters as the uninterrupted one.
Only process 0 writes metrics.jsonl (one line a step, not one per process), results.json and the
export; both write their checkpoint shards. Before the pipeline laid hosts' rows out in blocks
(host i took records i, i + n, ...), the two layouts trained on differently ordered batches and
step 1's loss differed by 1e-3.
"""

import json
import os

import numpy as np
import pytest

STEPS = 3

SETUP = """
import json, os, shutil, sys
import jax, numpy as np
from configs import ppo_recovery, reward_model
from deepalign import main, models
from deepalign.train import policy_init, stage_data

TINY = {'hidden_size': 32, 'num_layers': 1, 'num_heads': 4, 'num_kv_heads': 4, 'head_dim': 8,
        'intermediate_size': 64}

def make_reward_model(directory):
  # A random score model of the toy language: the test needs a reward, not a good one.
  config = reward_model.get_config('toy')
  config.model.update(TINY)
  model, init = policy_init.build(config, stage_data.load(config).tokenizer, head='score')
  models.save_pretrained(model, init(jax.random.PRNGKey(0)), directory)

def ppo_config(rm_dir):
  config = ppo_recovery.get_config('toy')
  config.model.update({'init_from': '', **TINY})
  config.rl.update({'reward_from': rm_dir, 'harm_eval': False, 'max_new_tokens': 4})
  config.ppo.update({'epochs': 1, 'minibatches': 2})
  config.recovery.batch_size = 8
  config.train.update({'num_steps': %(steps)d, 'batch_size': 8, 'log_every': 1, 'eval_every': 0,
                       'checkpoint_every': 1, 'async_checkpointing': False})
  return config

def save_params(result, path):
  if jax.process_index() == 0:
    flat = jax.tree_util.tree_flatten_with_path(jax.device_get(result.state.params))[0]
    np.savez(path, **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})
""" % {'steps': STEPS}

ONE_HOST = SETUP + """
root = sys.argv[1]
make_reward_model(os.path.join(root, 'rm'))
result = main.run(ppo_config(os.path.join(root, 'rm')), os.path.join(root, 'one'))
assert jax.device_count() == 8 and not result.preempted
save_params(result, os.path.join(root, 'one.npz'))
print('ok')
"""

TWO_HOSTS = SETUP + """
from jax.experimental import multihost_utils
pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
config = ppo_config(os.path.join(root, 'rm'))
config.parallel.distributed.update({'enabled': True, 'coordinator_address': f'localhost:{port}',
                                    'num_processes': 2, 'process_id': pid, 'initialization_timeout': 120})
workdir = os.path.join(root, 'two')
result = main.run(config, workdir)
assert (jax.process_count(), jax.device_count()) == (2, 8) and not result.preempted
save_params(result, os.path.join(root, 'two.npz'))
if pid == 0:  # as a kill after the step-2 checkpoint leaves the workdir
  shutil.copy(os.path.join(workdir, 'metrics.jsonl'), os.path.join(root, 'two_metrics.jsonl'))
  shutil.rmtree(os.path.join(workdir, 'checkpoints', str(%(steps)d)))
multihost_utils.sync_global_devices('interrupted')
result = main.run(config, workdir)  # resumes from step 2
save_params(result, os.path.join(root, 'resumed.npz'))
print('ok', pid)
""" % {'steps': STEPS}


def _metrics(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _max_diff(a, b):
  assert a.files == b.files
  return max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)


@pytest.mark.slow
def test_two_processes_equal_one_and_resume_equal(tmp_path, run8, run_processes):
  run8(ONE_HOST.replace('sys.argv[1]', repr(str(tmp_path))), devices=8, timeout=600)
  run_processes(TWO_HOSTS, str(tmp_path), timeout=600)
  one, two = _metrics(tmp_path / 'one' / 'metrics.jsonl'), _metrics(tmp_path / 'two_metrics.jsonl')
  assert [r['step'] for r in one] == [r['step'] for r in two] == list(range(1, STEPS + 1))  # one writer
  for a, b in zip(one, two):
    diff = {k: abs(a[k] - b[k]) for k in a if k.startswith('train/') and a[k] is not None}
    assert max(diff.values()) <= 1e-5, (a['step'], max(diff, key=diff.get), max(diff.values()))
    assert a['train/loss'] != 0.0 and 'train/recovery/harm_rate' in a  # the recovery rollouts ran
  params = {name: np.load(tmp_path / f'{name}.npz') for name in ('one', 'two', 'resumed')}
  assert _max_diff(params['one'], params['two']) <= 1e-5
  assert _max_diff(params['two'], params['resumed']) <= 1e-5
  # The resumed run rewrote the last step's line, with the uninterrupted run's numbers.
  resumed = _metrics(tmp_path / 'two' / 'metrics.jsonl')
  assert [r['step'] for r in resumed] == list(range(1, STEPS + 1))
  assert abs(resumed[-1]['train/loss'] - two[-1]['train/loss']) <= 1e-5
  assert sorted(os.listdir(tmp_path / 'two' / 'checkpoints')) == [str(STEPS - 1), str(STEPS)]
  assert (tmp_path / 'two' / 'results.json').exists() and (tmp_path / 'two' / 'export' / 'config.json').exists()
