"""Numeric guards: a non-finite (or spiking) update is skipped in the jitted step, counted, and
`train.max_bad_steps` in a row stop the run with its last checkpoint intact."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from configs import common, linear_regression
from deepalign.train import linear_regression as linreg
from deepalign.train import loop, metrics_writer, optimizer
from deepalign.train.numeric_guard import GuardState, numeric_guard


def _tx(**kw):
  cfg = common.optimizer_defaults()
  cfg.update({'schedule': 'constant', 'learning_rate': 0.1})
  return optimizer.build_optimizer(cfg, 10, **kw)[0]


def _params():
  return {'w': jnp.arange(4.0), 'b': jnp.ones(())}


def _grads(scale=1.0):
  return jax.tree.map(lambda p: scale * jnp.ones_like(p), _params())


def test_a_nan_gradient_or_loss_leaves_params_and_moments_bit_identical():
  tx = _tx()
  params = _params()
  state = tx.init(params)
  assert isinstance(state, GuardState)
  update = jax.jit(lambda g, s, p, loss: tx.update(g, s, p, loss=loss))
  updates, state = update(_grads(), state, params, 1.0)
  params = optax.apply_updates(params, updates)
  for grads, loss in [(_grads(jnp.nan), 1.0), (_grads(jnp.inf), 1.0), (_grads(), jnp.nan)]:
    updates, new_state = update(grads, state, params, loss)
    new_params = optax.apply_updates(params, updates)
    jax.tree.map(np.testing.assert_array_equal, params, new_params)
    jax.tree.map(np.testing.assert_array_equal, state.inner, new_state.inner)
    assert int(new_state.in_row) == int(state.in_row) + 1
    state = new_state
  assert int(state.nonfinite) == 3 and int(state.spikes) == 0
  updates, state = update(_grads(), state, params, 1.0)  # a good one applies and resets the run
  assert int(state.in_row) == 0 and not np.array_equal(optax.apply_updates(params, updates)['w'],
                                                       params['w'])


def test_without_a_loss_the_gradient_norm_is_watched():
  """The fused RL steps call tx.update(grads, state, params): NaN gradients are still caught."""
  tx = _tx()
  params = _params()
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(_grads(jnp.nan), state, params)
  assert int(state.nonfinite) == 1
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))


def test_loss_spike_guard_skips_a_loss_above_k_times_the_running_median():
  tx = numeric_guard(optax.sgd(0.1), spike_factor=5.0, spike_window=8, spike_min_history=4)
  params = _params()
  state = tx.init(params)
  update = jax.jit(lambda g, s, p, loss: tx.update(g, s, p, loss=loss))
  for loss in (1.0, 1.2, 0.9, 1.1, 1.0):
    _, state = update(_grads(), state, params, loss)
  assert int(state.spikes) == 0
  updates, state = update(_grads(), state, params, 50.0)
  assert int(state.spikes) == 1 and int(state.in_row) == 1
  assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
  _, state = update(_grads(), state, params, 4.0)  # below 5 x median: applied
  assert int(state.spikes) == 1 and int(state.in_row) == 0


def test_gradient_accumulation_skips_the_bad_micro_batch_only():
  cfg = common.optimizer_defaults()
  cfg.update({'schedule': 'constant', 'learning_rate': 0.1, 'grad_accum_steps': 2,
              'name': 'sgd', 'grad_clip_norm': 0.0})
  tx, _ = optimizer.build_optimizer(cfg, 10)
  params = _params()
  state = tx.init(params)
  update = jax.jit(tx.update)
  _, state = update(_grads(jnp.nan), state, params)
  _, state = update(_grads(), state, params)
  updates, state = update(_grads(), state, params)  # the second good one completes the pair
  np.testing.assert_allclose(np.asarray(updates['w']), -0.1 * np.ones(4), rtol=1e-6)


class _Poisoned:
  """The task's batches with a 'poison' flag: True (NaN loss) at the given 1-based steps."""

  def __init__(self, inner, bad_steps):
    self.inner, self.bad_steps, self.count = inner, set(bad_steps), 0

  def __next__(self):
    self.count += 1
    return {**next(self.inner), 'poison': np.asarray(self.count in self.bad_steps)}

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def _poisoned_task(config, workdir, bad_steps):
  task = linreg.build_task(config, str(workdir))

  def loss_fn(params, frozen, batch, rng):
    loss, aux = task.loss_fn(params, frozen, {k: v for k, v in batch.items() if k != 'poison'}, rng)
    return loss * jnp.where(batch['poison'], jnp.nan, 1.0), aux

  return dataclasses.replace(task, loss_fn=loss_fn,
                             train_iterator=lambda: _Poisoned(task.train_iterator(), bad_steps))


def _config(**train):
  config = linear_regression.get_config()
  config.train.update({'num_steps': 10, 'log_every': 1, 'eval_every': 0, 'checkpoint_every': 2,
                       'async_checkpointing': False, 'max_to_keep': 5, **train})
  return config


def test_one_nan_step_is_skipped_and_counted(tmp_path):
  config = _config(num_steps=6, checkpoint_every=0)
  result = loop.train(_poisoned_task(config, tmp_path, {3}), config, str(tmp_path))
  assert int(result.state.step) == 6
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(result.state.params))
  rows = metrics_writer.read_metrics(str(tmp_path))
  assert [r['guard/nonfinite_updates'] for r in rows] == [0, 0] + [1] * 4
  assert rows[2]['train/loss'] is None  # the NaN loss is logged (as null), not hidden


def test_max_bad_steps_in_a_row_stop_the_run_with_the_last_checkpoint_intact(tmp_path):
  config = _config(max_bad_steps=3)
  with pytest.raises(loop.NumericStop, match=r'stopped at step 7: .*max_bad_steps=3.*checkpoints/6'):
    loop.train(_poisoned_task(config, tmp_path, range(5, 11)), config, str(tmp_path))
  steps = sorted(int(p) for p in os.listdir(tmp_path / 'checkpoints') if p.isdigit())
  assert steps == [2, 4, 6]
  restore = lambda s: ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / str(s) / 'state')
  at4, at6 = restore(4)['params'], restore(6)['params']
  jax.tree.map(np.testing.assert_array_equal, at4, at6)  # steps 5, 6 were skipped
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(at6))
