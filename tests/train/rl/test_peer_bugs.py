"""Regression tests for RL bugs other libraries shipped in 2025-26 (issue 17), whether or not
deepalign had them. Each test names the peer's bug; tiny and model-free where possible.
Also guarded elsewhere: pad == EOS (trl#6357) in test_episodes.py::
test_pad_equal_to_eos_keeps_real_eos_tokens; a KL gradient that is not the KL's / k2 like k1
(NeMo-RL#2506) in tests/objectives/test_kl.py::test_estimator_gradients_in_the_loss.
"""

import functools
import importlib.util
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import grpo as grpo_configs, linear_regression, ppo as ppo_configs
from deepalign.objectives import aggregation as agg
from deepalign.objectives import token_rewards
from deepalign.train import linear_regression as linreg
from deepalign.train import loop, metrics_writer
from deepalign.train.preemption import PreemptionGuard
from deepalign.train.rl import grpo_step, ppo_step
from deepalign.train.rl.batches import RECOVERY_KEYS, RLBatches
from deepalign.train.state import TrainState


# --- Tunix 0.1.7: rewards built from zeros_like(token_ids) truncated float scores to int32 ------

def test_float_scores_reach_the_token_rewards_unrounded():
  scores = jnp.array([0.37, -1.25, 2.5e-3])
  mask = jnp.array([[1, 1, 0], [1, 0, 0], [1, 1, 1]], jnp.int32)  # int masks and ids about
  logp = jnp.zeros((3, 3))
  rewards, _ = token_rewards.kl_shaped_rewards(scores, logp, logp, mask, 0.0)
  assert rewards.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(rewards)[[0, 1, 2], [1, 0, 2]], np.asarray(scores))


# --- tunix#2288 / #2290 and verl#5725: resume and the data position ------------------------------

def _iterator(seed: int, keys=('prompt_tokens',)):
  ds = (grain.MapDataset.source(list(range(40))).seed(seed).shuffle().repeat().batch(4)
        .map(lambda ids: {k: np.asarray(ids) + 100 * i for i, k in enumerate(keys)}))
  return iter(ds.to_iter_dataset())


def test_rl_batches_resume_both_shuffles_where_they_stopped():
  recovery_keys = tuple(RECOVERY_KEYS)
  straight = RLBatches(_iterator(0), _iterator(1, recovery_keys))
  for _ in range(3):
    next(straight)
  state = straight.get_state()
  want = [next(straight) for _ in range(4)]
  resumed = RLBatches(_iterator(0), _iterator(1, recovery_keys))  # fresh: shuffles restart ...
  resumed.set_state(state)                          # ... until the checkpointed state is set
  got = [next(resumed) for _ in range(4)]
  assert set(want[0]) == {'prompt_tokens', *RECOVERY_KEYS.values()}
  for a, b in zip(want, got):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])


class _StopAt(PreemptionGuard):
  def __init__(self, at: int):
    super().__init__(signals=())
    self.at = at

  def should_stop(self, step: int) -> bool:
    return step >= self.at


def _four_update_step(loss_fn, tx, schedule, grad_accum_steps, state_shardings=None,
                      metrics_sharding=None):
  """Like the RL steps: several optimizer updates per batch, ONE batch drawn per step; the
  batch's first x is logged so the test sees which data each step trained on."""
  del schedule, grad_accum_steps, state_shardings, metrics_sharding

  @functools.partial(jax.jit, donate_argnums=(0,))
  def step(state: TrainState, frozen, batch):
    params, opt_state = state.params, state.opt_state
    for _ in range(4):
      grads = jax.grad(lambda p: loss_fn(p, frozen, batch, state.step_rng())[0])(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
    return (state.replace(params=params, opt_state=opt_state, step=state.step + 1),
            {'loss': loss_fn(params, frozen, batch, state.step_rng())[0],
             'first_x': batch['x'][0, 0]})
  return step


def _task(config, workdir):
  task = linreg.build_task(config, workdir)
  task.make_step = functools.partial(_four_update_step, task.loss_fn)
  task.updates_per_batch = 4
  return task


def test_resume_at_an_epoch_boundary_with_several_updates_per_batch(tmp_path):
  # 64 training examples / batch 8 = 8 batches an epoch; the run stops at step 8 (the epoch
  # boundary) and resumes: it trains steps 9..12 (not zero, verl#5725) on the batches an
  # uninterrupted run sees (shuffle state restored, nothing skipped: tunix#2288 / #2290).
  config = linear_regression.get_config()
  config.train.update({'num_steps': 12, 'log_every': 1, 'eval_every': 0, 'checkpoint_every': 4,
                       'async_checkpointing': False})
  want = [float(b['x'][0, 0]) for b, _ in zip(_task(config, '').train_iterator(), range(12))]
  first = loop.train(_task(config, str(tmp_path)), config, str(tmp_path), guard=_StopAt(8))
  assert first.preempted and int(first.state.step) == 8
  resumed = loop.train(_task(config, str(tmp_path)), config, str(tmp_path))
  assert int(resumed.state.step) == 12
  rows = metrics_writer.read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == list(range(1, 13))
  np.testing.assert_allclose([r['train/first_x'] for r in rows], want, rtol=1e-6)


# --- trl#6503: KL bias correction switched on silently ------------------------------------------

def test_the_kl_estimator_and_its_place_are_explicit_config_fields():
  # No hidden importance weight or bias correction on the KL: the estimator and where it enters
  # are the config's fields, reported in the metric names (kl/<estimator>_per_token).
  fields = {f for f in ppo_step.PPOConfig.__dataclass_fields__} | {
      f for f in grpo_step.GRPOConfig.__dataclass_fields__}
  assert not [f for f in fields if 'bias' in f or 'correct' in f or 'importance' in f]
  p, g = ppo_configs.get_config('toy').ppo, grpo_configs.get_config('toy').grpo
  assert (p.kl_estimator, p.kl_penalty_in) == ('k1', 'reward')  # TRL PPO: k1 in the reward
  assert g.beta > 0  # GRPO: k3 in the loss (GRPOConfig docstring), beta = 0 drops it


# --- maxtext#4025: loss aggregation ~10x off the reference --------------------------------------

def test_aggregation_matches_trl_and_verl_on_the_same_batch():
  # The reference formulas, written as TRL's GRPOTrainer (loss_type 'grpo', 'bnpo', 'dapo' with
  # num_items_in_batch) and verl (loss_agg_mode 'token-mean', 'seq-mean-token-mean') compute
  # them, on one batch on one device. deepalign: PPO default token_mean = TRL bnpo / dapo =
  # verl token-mean (factor 1); GRPO default sequence_mean = TRL grpo = verl
  # seq-mean-token-mean (factor 1); token_mean / sequence_mean differ only with unequal lengths
  # (here by the factor printed below), never by a constant like 10.
  rng = np.random.default_rng(0)
  x = rng.normal(size=(4, 6)).astype(np.float32)
  lengths = np.array([6, 2, 4, 1])
  m = (np.arange(6)[None] < lengths[:, None]).astype(np.float32)
  trl_grpo = np.mean((x * m).sum(-1) / m.sum(-1))
  trl_bnpo = (x * m).sum() / m.sum()
  trl_dapo = (x * m).sum() / m.sum()  # num_items_in_batch: the global token count
  verl_token_mean = (x * m).sum() / m.sum()
  verl_seq_mean_token_mean = np.mean((x * m).sum(-1) / m.sum(-1))
  xs, ms = jnp.asarray(x), jnp.asarray(m)
  token_mean = float(agg.aggregate(xs, ms, 'token_mean'))
  sequence_mean = float(agg.aggregate(xs, ms, 'sequence_mean'))
  token_sum = float(agg.aggregate(xs, ms, 'token_sum_normalized', agg.global_token_count(ms)))
  for ours, theirs in ((token_mean, trl_bnpo), (token_mean, trl_dapo),
                       (token_mean, verl_token_mean), (token_sum, trl_dapo),
                       (sequence_mean, trl_grpo), (sequence_mean, verl_seq_mean_token_mean)):
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
  # Gradient scale of one token: token_mean 1 / sum(L) for every token; sequence_mean
  # 1 / (B * L_i). Equal lengths: the same loss and gradient.
  grad_tm = np.asarray(jax.grad(lambda v: agg.aggregate(v, ms, 'token_mean'))(xs))
  grad_sm = np.asarray(jax.grad(lambda v: agg.aggregate(v, ms, 'sequence_mean'))(xs))
  np.testing.assert_allclose(grad_tm[m > 0], 1.0 / lengths.sum(), rtol=1e-6)
  np.testing.assert_allclose(grad_sm[m > 0], (1.0 / (4 * np.repeat(lengths, lengths))), rtol=1e-6)
  ones = jnp.ones((4, 6))
  np.testing.assert_allclose(float(agg.aggregate(xs, ones, 'token_mean')),
                             float(agg.aggregate(xs, ones, 'sequence_mean')), rtol=1e-6)
