"""The PPO and GRPO steps give the same result on 1 device and on 8 simulated CPU devices."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = str(pathlib.Path(__file__).resolve().parents[3])  # tests/train/rl/ -> the repository

CODE = """
import importlib.util, json
import jax, jax.numpy as jnp, numpy as np
from deepalign import parallel
from deepalign.models.config import ModelConfig
from deepalign.models.transformer import Transformer
from deepalign.train.rl import grpo_step, ppo_step
from deepalign.train.rl.sharding import shard_rl_state

spec = importlib.util.spec_from_file_location('rl_fixtures', 'tests/train/rl/fixtures.py')
fx = importlib.util.module_from_spec(spec); spec.loader.exec_module(fx)

def tiny(head):  # 4 heads and an MLP that divide the tensor axis
  return Transformer(ModelConfig(vocab_size=fx.ENV.vocab_size, hidden_size=32, num_layers=1,
      num_heads=4, intermediate_size=64, max_position_embeddings=64, head=head,
      pad_id=fx.ENV.pad_id, bos_id=fx.ENV.bos_id, eos_id=fx.ENV.eos_id))
fx.tiny = tiny

batch = fx.rl_batch(fx.ENV, 8, 8)
KIND = '%(kind)s'
if KIND == 'ppo':
  config = ppo_step.PPOConfig(rollout=fx.rollout_spec(), epochs=2, minibatches=2, kl_coef=0.05)
  make = ppo_step.make_ppo_step
  models, tx, state = fx.make_state(config.kl_coef, shared_value=False)
else:
  config = grpo_step.GRPOConfig(rollout=fx.rollout_spec(group_size=2), minibatches=2)
  make = grpo_step.make_grpo_step
  models, tx, state = fx.make_state(0.0, with_value=False)
# Plain SGD: Adam's first update is lr * g / (|g| + eps), which turns float reduction-order
# noise in a near-zero gradient entry into a full-size step; SGD shows the step's own agreement.
import optax
tx = optax.sgd(0.1)
state = state.replace(opt_state=tx.init(state.params))
host_state = jax.device_get(state)
step = make(models, config, tx)

one = jax.devices()[0]
ref_state, ref_metrics = step(jax.device_put(host_state, one), jax.device_put(batch, one))
ref_params = jax.device_get(ref_state.params)
ref_metrics = jax.device_get(ref_metrics)
out = {}
for shape in [{'data': 8}, {'data': 4, 'fsdp': 2}, {'data': 2, 'tensor': 4}]:
  mesh = parallel.make_mesh(shape)
  sharded = shard_rl_state(jax.device_put(host_state, one), models, tx, mesh)
  specs = {str(s.sharding.spec) for s in jax.tree.leaves(sharded.params)}
  new_state, metrics = step(sharded, parallel.shard_batch(batch, mesh))
  assert len(new_state.params['policy']['embed']['embedding'].sharding.device_set) == 8
  params = jax.device_get(new_state.params)
  metrics = jax.device_get(metrics)
  pdiff = max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), params, ref_params)))
  mdiff = {k: abs(float(metrics[k]) - float(ref_metrics[k])) for k in ref_metrics
           if np.isfinite(ref_metrics[k])}
  out[json.dumps(shape)] = {'params': pdiff, 'metrics': max(mdiff.values()),
                            'worst_metric': max(mdiff, key=mdiff.get), 'specs': sorted(specs)}
print('RESULT', json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['ppo', 'grpo'])
def test_step_is_the_same_on_one_and_eight_devices(kind):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu', PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, '-c', textwrap.dedent(CODE % {'kind': kind})], env=env,
                        cwd=REPO, capture_output=True, text=True, timeout=1200)
  assert proc.returncode == 0, proc.stderr[-4000:]
  import json
  result = json.loads(proc.stdout.split('RESULT', 1)[1])
  for mesh, r in result.items():
    assert r['params'] <= 1e-5, (mesh, r)
    assert r['metrics'] <= 1e-5, (mesh, r)
  # The meshes really split the parameters (not everything replicated).
  assert any('tensor' in s for s in result['{"data": 2, "tensor": 4}']['specs'])
  assert any('fsdp' in s for s in result['{"data": 4, "fsdp": 2}']['specs'])
