"""Regression tests of the RL correctness traps of issue 17: the bugs found on review of
deepalign and the bugs other RL libraries shipped in 2025-26. Each test names its trap; the
README's "Correctness" section lists them. Tiny shapes, and one jitted sampler shared by the
filter tests.
"""

import dataclasses
import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.rollout.filters import top_k_filter, top_p_filter
from deepalign.rollout.logprobs import token_entropy, token_logprobs
from deepalign.rollout.sampling_config import SamplingConfig
from deepalign.train.rl import episodes as rl_episodes
from deepalign.train.rl import grpo_step
from deepalign.train.rl import ppo_step

_spec = importlib.util.spec_from_file_location(
    'rl_fixtures', pathlib.Path(__file__).with_name('fixtures.py'))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

BATCH = jax.tree.map(jnp.asarray, fx.rl_batch(fx.ENV, 4, 4))
TEMPERATURE = 0.7


def _filtered_spec(top_k: int, top_p: float, **overrides):
  sampling = SamplingConfig(max_new_tokens=fx.ENV.max_response_words, temperature=TEMPERATURE,
                            top_k=top_k, top_p=top_p, eos_id=fx.ENV.eos_id, pad_id=fx.ENV.pad_id)
  # G = 2 samples per prompt (GRPO's groups), recovery depths k ~ U{1..4}.
  return fx.rollout_spec(sampling=sampling, group_size=2, min_depth=1, **overrides)


@functools.lru_cache(maxsize=None)
def filtered_episodes(top_k: int, top_p: float):
  """Episodes sampled with top-k / top-p from a random tiny policy, its logits on them, and the
  training path's log-probs (`response_token_stats`, what the PPO / GRPO updates call)."""
  models, _, state = fx.make_state(0.05, shared_value=True)
  spec = _filtered_spec(top_k, top_p)

  @jax.jit
  def run(params, batch, rng):
    ep = rl_episodes.sample_episodes(models.policy, params, batch, rng, spec)
    logits, _ = rl_episodes.response_logits(models.policy, params, ep)
    train_logprobs = rl_episodes.response_token_stats(
        models.policy, params, ep, spec.sampling.temperature, **spec.sampling.filters)[0]
    return ep, logits, train_logprobs

  return spec, *run(state.params['policy'], BATCH, jax.random.PRNGKey(3))


def _filtered_log_softmax(logits, top_k, top_p):
  """By hand: the tempered logits, truncated as the sampler truncates, renormalized."""
  z = logits.astype(jnp.float32) / TEMPERATURE
  return jax.nn.log_softmax(top_p_filter(top_k_filter(z, top_k), top_p), axis=-1)


def _minibatch(ep, advantages):
  zeros = jnp.zeros(ep.tokens.shape)
  return {'episodes': ep, 'old_logprobs': ep.sampler_logprobs, 'ref_logprobs': zeros - 2.0,
          'old_values': zeros, 'advantages': advantages, 'returns': zeros}


def _ppo_loss_of_logits(logits, mb, config, kl_coef):
  """ppo_loss on the (filtered) log-probs and entropies of `logits`, as the update computes them."""
  sampling = config.rollout.sampling
  tokens = mb['episodes'].tokens
  logprobs = token_logprobs(logits, tokens, sampling.temperature, **sampling.filters)
  entropy = token_entropy(logits, sampling.temperature, **sampling.filters)
  return ppo_step.ppo_loss(logprobs, entropy, jnp.zeros(tokens.shape), mb, config, kl_coef)


# --- item 8: top-k / top-p and the log-probs ------------------------------------------------

TOP_K, TOP_P = 8, 0.5  # both act: on the near-uniform random policy top-p keeps ~4 of the 8


def test_sampler_logprobs_are_of_the_filtered_distribution_it_samples():
  # Issue 17 item 8 (trl#6945's family): the sampler drew from the truncated, renormalized
  # distribution but reported (and trained on) full-softmax log-probs. Now the sampler's
  # log-probs, the training path's and the hand-computed filtered log-softmax agree.
  spec, ep, logits, train_logprobs = filtered_episodes(TOP_K, TOP_P)
  by_hand = np.asarray(_filtered_log_softmax(logits, TOP_K, TOP_P))
  kept = by_hand > -1e29
  assert (kept.sum(-1) < TOP_K).any() and (kept.sum(-1) <= TOP_K).all()
  gen = np.asarray(ep.generated_mask, bool)
  picked = np.take_along_axis(by_hand, np.asarray(ep.tokens)[..., None], axis=-1)[..., 0]
  sampler = np.asarray(ep.sampler_logprobs)
  np.testing.assert_allclose(sampler[gen], picked[gen], atol=2e-5)
  np.testing.assert_allclose(np.asarray(train_logprobs)[gen], picked[gen], atol=2e-5)
  assert (sampler[gen] > -1e3).all()  # every sampled token is inside the kept set
  # The updates' ratios start at 1 against the sampler's log-probs (PPO and GRPO).
  mb = _minibatch(ep, jnp.ones(ep.tokens.shape))
  _, metrics = _ppo_loss_of_logits(logits, mb, ppo_step.PPOConfig(rollout=spec), 0.0)
  np.testing.assert_allclose(float(metrics['ratio']), 1.0, atol=1e-5)
  assert float(metrics['approx_kl']) < 1e-9
  mb['advantages'] = jnp.linspace(-1.0, 1.0, ep.tokens.shape[0])
  gconfig = grpo_step.GRPOConfig(rollout=spec)
  _, gmetrics = grpo_step.grpo_minibatch_loss(train_logprobs, mb, gconfig)
  np.testing.assert_allclose(float(gmetrics['train/ratio']), 1.0, atol=1e-5)


def test_the_policy_gradient_is_the_filtered_distributions():
  # Item 8: the gradient of log pi_filtered(y) puts no weight on the logits the filter dropped
  # (the full softmax's pushes every one of them down), and stays finite with the KL in the
  # loss although forced tokens outside the kept set have log-prob -1e30 (k3 = inf there).
  spec, ep, logits, _ = filtered_episodes(TOP_K, TOP_P)
  gen = np.asarray(ep.generated_mask, bool)
  forced = np.asarray(ep.response_mask, bool) & ~gen
  assert (np.asarray(ep.sampler_logprobs)[forced] < -1e29).any(), 'a prefix outside the kept set'
  dropped = np.asarray(_filtered_log_softmax(logits, TOP_K, TOP_P)) < -1e29
  mb = _minibatch(ep, jnp.ones(ep.tokens.shape))
  for kl_penalty_in in ('reward', 'loss'):
    config = ppo_step.PPOConfig(rollout=spec, kl_penalty_in=kl_penalty_in, kl_estimator='k3',
                                entropy_coef=0.01)
    grad = np.asarray(jax.jit(jax.grad(
        lambda lg: _ppo_loss_of_logits(lg, mb, config, 0.1)[0]))(logits))
    assert np.isfinite(grad).all()
    assert (grad[gen][dropped[gen]] == 0).all()
    assert (np.abs(grad[gen]).sum(-1) > 0).all()
  mb['advantages'] = jnp.linspace(-1.0, 1.0, ep.tokens.shape[0])
  gconfig = grpo_step.GRPOConfig(rollout=spec, beta=0.04)
  grad = jax.jit(jax.grad(lambda lg: grpo_step.grpo_minibatch_loss(
      token_logprobs(lg, ep.tokens, TEMPERATURE, TOP_K, TOP_P), mb, gconfig)[0]))(logits)
  assert np.isfinite(np.asarray(grad)).all()


# --- item 2: one prefix depth per GRPO group -----------------------------------------------

def test_a_group_shares_its_prefix_depth():
  # Issue 17 item 2: the depth was drawn after jnp.repeat, so a GRPO group's baseline compared
  # rollouts from different start states. Now the G rollouts of a recovery prompt share k.
  spec, ep, _, _ = filtered_episodes(TOP_K, TOP_P)
  n = rl_episodes.num_ordinary(BATCH, spec)
  depth = np.asarray(ep.depth)[n:].reshape(-1, spec.group_size)
  assert (depth == depth[:, :1]).all(), depth
  assert len(set(depth[:, 0].tolist())) > 1  # and depths still differ between prompts
  forced = np.asarray(ep.response_mask)[n:] - np.asarray(ep.generated_mask)[n:]
  np.testing.assert_array_equal(forced.sum(1), depth.reshape(-1))


# --- item 3: k1 in the loss ----------------------------------------------------------------

def test_k1_in_the_loss_is_refused_at_config_time():
  # Issue 17 item 3: kl_penalty_in='loss' with k1 has zero expected gradient on-policy; the
  # step used to accept it. Now the config is refused with the fix in the message.
  from configs import ppo
  from deepalign.errors import UserError
  from deepalign.train.rl import stage as rl
  spec = fx.rollout_spec()
  with pytest.raises(UserError, match="kl_estimator='k2'"):
    ppo_step.PPOConfig(rollout=spec, kl_penalty_in='loss', kl_estimator='k1')
  config = ppo.get_config('toy')
  config.ppo.kl_penalty_in = 'loss'
  with pytest.raises(UserError, match='zero expected gradient'):
    rl.ppo_config(config, spec)
  config.ppo.kl_estimator = 'k2'
  assert rl.ppo_config(config, spec).kl_estimator == 'k2'


# --- item 4: one token count per batch -----------------------------------------------------

def _gradient_sum_tx():
  """An 'optimizer' that never moves the params and sums every gradient it is given: the
  minibatch updates of one step then all see the same params, and the state is their sum."""
  import optax
  return optax.GradientTransformation(
      lambda params: jax.tree.map(jnp.zeros_like, params),
      lambda g, s, params=None: (jax.tree.map(jnp.zeros_like, g), jax.tree.map(jnp.add, s, g)))


def _step_gradient_sum(kind: str, minibatches: int, monkeypatch):
  """The summed minibatch gradients of one PPO / GRPO step on the cached filtered episodes
  (collect is replaced by them: no sampler compiled here)."""
  from deepalign.train.rl import collect as rl_collect
  from deepalign.train.rl.episodes import Scores
  from deepalign.train.rl.state import RLState
  spec, ep, _, _ = filtered_episodes(TOP_K, TOP_P)
  n = rl_episodes.num_ordinary(BATCH, spec)
  e, t = ep.tokens.shape
  score = jnp.linspace(-1.0, 1.0, e)
  collected = rl_collect.Collected(
      ep, Scores(score=score, reward_model=score[:n], judged={'harm': jnp.zeros(e)}),
      ep.sampler_entropy, jnp.zeros((e, t, fx.HIDDEN)), ep.sampler_logprobs,
      jnp.where(ep.generated_mask > 0, ep.sampler_logprobs - 0.3, 0.0), n)
  monkeypatch.setattr(rl_collect, 'collect', lambda *args: collected)
  models, _, st = fx.make_state(0.05, shared_value=True)
  tx = _gradient_sum_tx()
  if kind == 'ppo':
    config = ppo_step.PPOConfig(rollout=spec, aggregation='token_sum_normalized', epochs=1,
                                minibatches=minibatches, kl_penalty_in='loss', kl_estimator='k2')
    make, value = ppo_step.make_ppo_step, st.params['value']
  else:
    config = grpo_step.GRPOConfig(rollout=spec, aggregation='token_sum_normalized', epochs=1,
                                  minibatches=minibatches, beta=0.04)
    make, value = grpo_step.make_grpo_step, None
  state = RLState.create(policy=st.params['policy'], reference=st.frozen['reference'],
                         reward=st.frozen['reward'], judge={}, tx=tx, rng=st.rng,
                         kl_coef=0.05, value=value)
  new_state, _ = make(models, config, tx)(state, BATCH)
  return jax.tree.map(np.asarray, new_state.opt_state)


@pytest.mark.parametrize('kind', ['ppo', 'grpo'])
def test_token_sum_normalized_uses_one_count_per_batch(kind, monkeypatch):
  # Issue 17 item 4: each minibatch divided its token sum by its OWN token count, so two
  # minibatches' gradients summed to ~2x the one-minibatch gradient. Now the count is the
  # whole batch's: same summed gradient for minibatches=1 and 2 (fails on the old steps).
  one = _step_gradient_sum(kind, 1, monkeypatch)
  two = _step_gradient_sum(kind, 2, monkeypatch)
  flat_one, flat_two = jax.tree.leaves(one), jax.tree.leaves(two)
  assert max(float(np.abs(x).max()) for x in flat_one) > 1e-4
  for a, b in zip(flat_one, flat_two):
    np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-6)


# --- item 5: whitening per source ----------------------------------------------------------

def _advantages_with_reward_scale(scale: float, whiten_rewards: bool):
  from deepalign.train.rl import collect as rl_collect
  from deepalign.train.rl.episodes import Scores
  spec, ep, _, _ = filtered_episodes(TOP_K, TOP_P)
  n = rl_episodes.num_ordinary(BATCH, spec)
  e = ep.tokens.shape[0]
  rm = scale * jnp.linspace(-1.0, 2.0, n)
  recovery = -1.0 * jnp.linspace(0.0, 1.0, e - n)  # -lambda_rec * h
  score = jnp.concatenate([rm, recovery])
  c = rl_collect.Collected(ep, Scores(score=score, reward_model=rm, judged={}),
                           ep.sampler_entropy, None, ep.sampler_logprobs, ep.sampler_logprobs, n)
  config = ppo_step.PPOConfig(rollout=spec, whiten_rewards=whiten_rewards, kl_coef=0.0)
  data, _ = ppo_step.minibatch_data(config, c, jnp.zeros(ep.tokens.shape), jnp.asarray(0.0))
  return np.asarray(data['advantages']), n, np.asarray(ep.generated_mask, bool)


@pytest.mark.parametrize('whiten_rewards', [False, True])
def test_recovery_advantages_do_not_depend_on_the_reward_models_scale(whiten_rewards):
  # Issue 17 item 5: whitened together, the recovery rows' -lambda_rec * h was divided by a std
  # set by the reward model's scale, so lambda_rec's effect did too (fails on the old step:
  # scale 10 shrank the recovery advantages ~10x). Now ordinary rows are whitened alone.
  a1, n, gen = _advantages_with_reward_scale(1.0, whiten_rewards)
  a10, _, _ = _advantages_with_reward_scale(10.0, whiten_rewards)
  rec = gen.copy()
  rec[:n] = False
  assert np.abs(a1[rec]).max() > 0.1
  np.testing.assert_allclose(a10[rec], a1[rec], rtol=1e-5, atol=1e-6)
  ordinary = gen.copy()
  ordinary[n:] = False
  np.testing.assert_allclose(a1[ordinary].mean(), 0.0, atol=1e-5)  # whitened advantages
  if not whiten_rewards:  # (TRL's reward whitening adds the mean back: not scale-free)
    np.testing.assert_allclose(a10[ordinary], a1[ordinary], rtol=1e-4, atol=1e-5)
