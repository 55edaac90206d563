"""The fused PPO step on the synthetic harm language with tiny models.

One compiled step is shared by the tests (compilation dominates their time).
"""

import dataclasses
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.train.rl import ppo_step as ppo

_spec = importlib.util.spec_from_file_location(
    'rl_fixtures', pathlib.Path(__file__).with_name('fixtures.py'))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

CONFIG = ppo.PPOConfig(rollout=fx.rollout_spec(), epochs=1, minibatches=1, kl_coef=0.05)


@functools.lru_cache(maxsize=None)
def compiled_step():
  models, tx, _ = fx.make_state(CONFIG.kl_coef, shared_value=True)
  return ppo.make_ppo_step(models, CONFIG, tx)


def fresh_state(seed: int = 0):
  return fx.make_state(CONFIG.kl_coef, shared_value=True, seed=seed)[2]


BATCH = jax.tree.map(jnp.asarray, fx.rl_batch(fx.ENV, 4, 4))


@pytest.fixture(scope='module')
def two_steps():
  """(state before, state after 1 step, metrics of step 1, metrics of step 2)."""
  step = compiled_step()
  before = jax.device_get(fresh_state())
  state, m1 = step(fresh_state(), BATCH)
  after = jax.device_get(state)
  state, m2 = step(state, BATCH)
  return before, after, jax.device_get(m1), jax.device_get(m2)


def test_step_reports_every_metric(two_steps):
  _, after, metrics, _ = two_steps
  assert int(after.step) == 1
  for name in ('reward/mean', 'reward/std', 'recovery/harm_rate', 'kl', 'kl/coef',
               'policy/entropy', 'clipfrac', 'approx_kl', 'loss/policy', 'loss/value',
               'value/explained_variance', 'response/length_mean', 'response/eos_rate',
               'harm/ordinary', 'helpful/ordinary', 'grad_norm'):
    assert name in metrics, name
  finite = {k: v for k, v in metrics.items() if k != 'value/explained_variance'}
  assert all(np.isfinite(v) for v in finite.values()), finite
  assert 0 <= metrics['recovery/harm_rate'] <= 1


def test_ratios_start_at_exactly_one(two_steps):
  # One epoch of one minibatch: the update sees the policy that sampled (same temperature on
  # every log-prob path), so every ratio is 1, nothing is clipped, and the KL to the identical
  # reference is exactly 0.
  _, _, first, second = two_steps
  assert first['clipfrac'] == 0.0
  assert abs(first['approx_kl']) < 1e-7
  assert first['kl'] == 0.0
  # After an update the policy has moved away from the reference.
  assert second['kl'] != 0.0


def test_params_change_and_frozen_models_do_not(two_steps):
  before, after, _, _ = two_steps
  moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), before.params, after.params)
  assert max(jax.tree.leaves(moved['policy'])) > 0
  assert max(jax.tree.leaves(moved['value'])) > 0
  assert all(jax.tree.leaves(jax.tree.map(np.array_equal, before.frozen, after.frozen)))


def test_no_host_round_trip_and_same_seed_same_result(two_steps):
  _, _, first, _ = two_steps
  step = compiled_step()
  state, batch = jax.device_put(fresh_state()), jax.device_put(BATCH)
  with jax.transfer_guard('disallow'):
    state, metrics = step(state, batch)
  assert jax.device_get(metrics) == first
  _, other = step(fresh_state(seed=1), BATCH)
  assert jax.device_get(other)['loss/policy'] != first['loss/policy']


def test_adaptive_kl_controller_moves_beta():
  cfg = ppo.PPOConfig(rollout=fx.rollout_spec(recovery_coef=0.0), epochs=1, minibatches=1,
                      kl_coef=0.05, adaptive_kl_target=1e-6, adaptive_kl_horizon=10.0)
  models, tx, state = fx.make_state(cfg.kl_coef, shared_value=True)
  step = ppo.make_ppo_step(models, cfg, tx)
  state, _ = step(state, BATCH)   # KL 0 at the first step: beta shrinks
  state, m = step(state, BATCH)
  assert m['kl/coef'] < 0.05
  # Ziegler's controller moves beta at every step (error clipped to +-0.2, never 0 here): up
  # when the measured KL exceeds the target, down when it is below (a KL of 0 included).
  beta, new_beta, kl = float(m['kl/coef']), float(state.kl_ctl.value), float(m['kl'])
  assert new_beta != beta
  assert (new_beta > beta) == (kl > 1e-6)


def test_logprobs_from_sampler_start_ratios_at_one(two_steps):
  # The sampler's log-probs (KV-cache decode) stand in for the recomputing forward: the first
  # update still sees ratio 1 up to float rounding, and the metrics match the recomputed run's
  # (the shared compiled step's; the value model's form does not touch the policy's log-probs).
  from_sampler = dataclasses.replace(CONFIG, rollout=dataclasses.replace(
      CONFIG.rollout, logprobs_from_sampler=True))
  models, tx, state = fx.make_state(from_sampler.kl_coef, shared_value=True)
  metrics = {'recomputed': two_steps[2],
             'sampler': jax.device_get(ppo.make_ppo_step(models, from_sampler, tx)(state, BATCH)[1])}
  m = metrics['sampler']
  assert m['clipfrac'] == 0.0
  assert abs(m['approx_kl']) < 1e-6
  assert abs(m['kl']) < 1e-4  # reference == policy: only rounding separates them
  for name in ('policy/entropy', 'loss/policy', 'loss/value', 'reward/mean'):
    np.testing.assert_allclose(m[name], metrics['recomputed'][name], rtol=1e-4, atol=1e-5,
                               err_msg=name)
