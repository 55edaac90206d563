"""Issue 17 item 1: the learning-rate schedule counts optimizer updates, not batches, in every
stage, and the logged learning rate is the one the updates applied.

The RL steps call `tx.update` epochs x minibatches times per batch; a schedule sized in
batches finished its cosine decay at 1/(epochs x minibatches) of the run. Model-free and tiny.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common, linear_regression
from deepalign.train import linear_regression as linreg
from deepalign.train import loop, metrics_writer, optimizer
from deepalign.train.rl import minibatches as rl_minibatches
from deepalign.train.rl import stage as rl_stage
from deepalign.train.rl.grpo_step import GRPOConfig
from deepalign.train.rl.ppo_step import PPOConfig
from deepalign.train.state import TrainState

K = 4  # tx.update calls per batch, as PPO's epochs x minibatches


def _config(num_steps, accum=1):
  config = linear_regression.get_config()
  config.train.update({'num_steps': num_steps, 'log_every': 1, 'eval_every': 0,
                       'checkpoint_every': 0, 'async_checkpointing': False})
  config.optimizer.update({'schedule': 'cosine', 'warmup_steps': 2, 'end_lr_ratio': 0.0,
                           'learning_rate': 0.1, 'grad_accum_steps': accum})
  return config


def _multi_update_step(loss_fn, tx, schedule, grad_accum_steps, state_shardings=None,
                       metrics_sharding=None):
  """An RL-like step: K optimizer updates on one batch, the applied rates averaged."""
  del grad_accum_steps, state_shardings, metrics_sharding

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state: TrainState, frozen, batch):
    params, opt_state, lrs = state.params, state.opt_state, []
    for _ in range(K):
      lrs.append(optimizer.applied_learning_rate(schedule, opt_state))
      grads = jax.grad(lambda p: loss_fn(p, frozen, batch, state.step_rng())[0])(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    metrics = {'loss': loss_fn(params, frozen, batch, state.step_rng())[0],
               'learning_rate': jnp.mean(jnp.stack(lrs))}
    return state.replace(params=params, opt_state=opt_state, step=state.step + 1), metrics
  return step


def _logged_lr(workdir):
  return np.array([r['train/learning_rate'] for r in metrics_writer.read_metrics(str(workdir))])


def test_a_multi_update_stage_schedule_spans_all_its_updates(tmp_path):
  # Fails before the fix: Task had no updates_per_batch and the loop sized the cosine in
  # batches (6 updates), so the rate was 0 from the third batch on.
  config = _config(num_steps=6)
  task = linreg.build_task(config, str(tmp_path))
  task.make_step = functools.partial(_multi_update_step, task.loss_fn)
  task.updates_per_batch = K
  loop.train(task, config, str(tmp_path))
  schedule = optimizer.build_schedule(config.optimizer, 6 * K)
  want = [np.mean([float(schedule(K * b + i)) for i in range(K)]) for b in range(6)]
  np.testing.assert_allclose(_logged_lr(tmp_path), want, rtol=1e-5)
  assert _logged_lr(tmp_path)[-1] > 0.002  # still decaying in the last batch (0 before)


def test_the_generic_step_logs_the_rate_of_its_update_under_accumulation(tmp_path):
  # SFT / RM / DPO: one tx.update per batch, MultiSteps applies every 2; batch b's logged rate
  # is the schedule at update b // 2 (the optimizer's count), over num_steps / 2 updates.
  config = _config(num_steps=8, accum=2)
  loop.train(linreg.build_task(config, str(tmp_path)), config, str(tmp_path))
  schedule = optimizer.build_schedule(config.optimizer, 4)
  np.testing.assert_allclose(_logged_lr(tmp_path), [float(schedule(b // 2)) for b in range(8)],
                             rtol=1e-5)


@pytest.mark.parametrize('accum', [1, 2])
def test_rl_updates_advance_the_schedule_once_per_minibatch(accum):
  # The fused RL steps' update loop: epochs=2 x minibatches=2 calls per batch; the count the
  # schedule reads advances per applied update, and the logged rate is their mean.
  cfg = common.optimizer_defaults()
  cfg.update({'schedule': 'linear', 'learning_rate': 1.0, 'warmup_steps': 0,
              'end_lr_ratio': 0.0, 'grad_accum_steps': accum, 'name': 'sgd'})
  tx, schedule = optimizer.build_optimizer(cfg, num_steps=3, updates_per_batch=4)
  assert optimizer.num_updates(3, 4, accum) == 12 // accum
  params = {'w': jnp.ones(3)}
  data = {'x': jnp.arange(8.0).reshape(8, 1)}
  loss = lambda p, mb: (jnp.sum(p['w'] * jnp.mean(mb['x'])), {})
  opt_state = tx.init(params)
  _, opt_state, m = jax.jit(lambda p, s: rl_minibatches.optimize(
      p, s, data, jax.random.PRNGKey(0), loss, tx, 2, 2, schedule))(params, opt_state)
  assert int(m['optimizer/updates']) == 4 // accum
  want = np.mean([float(schedule(i // accum)) for i in range(4)])
  np.testing.assert_allclose(float(m['learning_rate']), want, rtol=1e-6)


def test_rl_stages_count_epochs_times_minibatches():
  from deepalign.train.rl.episodes import RolloutSpec
  from deepalign.rollout.sampling_config import SamplingConfig
  spec = RolloutSpec(sampling=SamplingConfig(max_new_tokens=4, eos_id=1, pad_id=0), group_size=2)
  assert rl_stage.updates_per_batch(PPOConfig(rollout=spec, epochs=4, minibatches=2)) == 8
  assert rl_stage.updates_per_batch(GRPOConfig(rollout=spec, epochs=2, minibatches=3)) == 6
