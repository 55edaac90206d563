"""Recovery rollouts and the correctness traps of the RL steps, checked on real episodes."""

import functools
import importlib.util
import pathlib
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.objectives import token_rewards
from deepalign.objectives.entropy import entropy_from_logits
from deepalign.rollout.logprobs import token_logprobs
from deepalign.rollout.sampling_config import SamplingConfig
from deepalign.train.rl import grpo_step
from deepalign.train.rl import ppo_step
from deepalign.train.rl import episodes as rl_episodes

_spec = importlib.util.spec_from_file_location(
    'rl_fixtures', pathlib.Path(__file__).with_name('fixtures.py'))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

SPEC = fx.rollout_spec(depth_distribution='fixed', depths=(2, 3))
BATCH = jax.tree.map(jnp.asarray, fx.rl_batch(fx.ENV, 4, 4))


@functools.lru_cache(maxsize=None)
def episodes_and_logits():
  """Episodes sampled from a random tiny policy, with the policy's logits on them."""
  models, _, state = fx.make_state(0.05, shared_value=True)

  @jax.jit
  def run(params, batch, rng):
    ep = rl_episodes.sample_episodes(models.policy, params, batch, rng, SPEC)
    logits, _ = rl_episodes.response_logits(models.policy, params, ep)
    return ep, logits

  ep, logits = run(state.params['policy'], BATCH, jax.random.PRNGKey(3))
  return ep, logits


def test_recovery_rows_force_the_harmful_prefix():
  ep, _ = episodes_and_logits()
  n = rl_episodes.num_ordinary(BATCH, SPEC)
  depth = np.asarray(ep.depth)
  assert (depth[:n] == 0).all() and set(depth[n:].tolist()) <= {2, 3}
  tokens, gen, resp = map(np.asarray, (ep.tokens, ep.generated_mask, ep.response_mask))
  harmful = np.asarray(BATCH['recovery_harmful_response'])
  for i, k in enumerate(depth[n:]):
    row = n + i
    np.testing.assert_array_equal(tokens[row, :k], harmful[i, :k])
    assert (gen[row, :k] == 0).all() and (resp[row, :k] == 1).all()
    assert gen[row, k] == 1  # the policy continues right after the prefix
  assert np.asarray(ep.is_recovery)[n:].all() and not np.asarray(ep.is_recovery)[:n].any()


def test_every_logprob_path_uses_the_sampling_temperature():
  # The sampler's log-probs equal a full-forward recomputation at the same temperature (so
  # PPO ratios start at 1), and differ from the temperature-1 log-probs.
  ep, logits = episodes_and_logits()
  recomputed = token_logprobs(logits, ep.tokens, SPEC.sampling.temperature)
  mask = np.asarray(ep.response_mask, bool)
  np.testing.assert_allclose(np.asarray(recomputed)[mask], np.asarray(ep.sampler_logprobs)[mask],
                             atol=2e-5)
  untempered = token_logprobs(logits, ep.tokens, 1.0)
  assert np.abs(np.asarray(untempered)[mask] - np.asarray(recomputed)[mask]).max() > 1e-3


def _ppo_loss(logits, values, mb, config, kl_coef):
  """`ppo_step.ppo_loss` on the log-probs and entropies of full logits (differentiable)."""
  temperature = config.rollout.sampling.temperature
  return ppo_step.ppo_loss(token_logprobs(logits, mb['episodes'].tokens, temperature),
                           entropy_from_logits(logits, temperature), values, mb, config, kl_coef)


def _minibatch(ep, seed=0):
  e, n = ep.tokens.shape
  rng = np.random.default_rng(seed)
  return {'episodes': ep,
          'old_logprobs': jnp.asarray(ep.sampler_logprobs),
          'ref_logprobs': jnp.asarray(ep.sampler_logprobs) - 0.1,
          'old_values': jnp.asarray(rng.normal(size=(e, n)), jnp.float32),
          'advantages': jnp.asarray(rng.normal(size=(e, n)), jnp.float32),
          'returns': jnp.asarray(rng.normal(size=(e, n)), jnp.float32)}


@pytest.mark.parametrize('kl_penalty_in', ['reward', 'loss'])
def test_prefilled_tokens_get_zero_policy_gradient(kl_penalty_in):
  ep, logits = episodes_and_logits()
  mb = _minibatch(ep)
  # k1 in the loss is refused (zero expected gradient); k2 is the loss's estimator.
  config = ppo_step.PPOConfig(rollout=SPEC, kl_penalty_in=kl_penalty_in, entropy_coef=0.01,
                              kl_estimator='k2' if kl_penalty_in == 'loss' else 'k1')
  values = jnp.zeros(ep.tokens.shape)
  grad = jax.grad(lambda lg: _ppo_loss(lg, values, mb, config, 0.1)[0])(logits)
  per_token = np.abs(np.asarray(grad)).sum(-1)            # [E, N]
  gen = np.asarray(ep.generated_mask, bool)
  forced = np.asarray(ep.response_mask, bool) & ~gen
  assert forced.sum() > 0
  assert (per_token[forced] == 0).all()                    # prefilled: context only
  assert (per_token[~np.asarray(ep.response_mask, bool)] == 0).all()   # padding
  assert (per_token[gen] > 0).all()                        # generated after the prefix: learn


def test_a_recovery_entropy_bonus_acts_on_recovery_rollouts_only():
  ep, logits = episodes_and_logits()
  mb = _minibatch(ep)
  values = jnp.zeros(ep.tokens.shape)
  loss = lambda config: _ppo_loss(logits, values, mb, config, 0.1)[0]
  grad = lambda config: np.abs(np.asarray(jax.grad(
      lambda lg: _ppo_loss(lg, values, mb, config, 0.1)[0])(logits))).sum(-1)
  plain = ppo_step.PPOConfig(rollout=SPEC)
  bonus = ppo_step.PPOConfig(rollout=SPEC, recovery_entropy_coef=0.5)
  entropy = entropy_from_logits(logits, SPEC.sampling.temperature)
  gen = np.asarray(ep.generated_mask, np.float32)
  rec = np.asarray(ep.is_recovery)[:, None] * gen
  # token_mean: the bonus is 0.5 x (recovery rows' entropy summed) / (all generated tokens).
  expected = 0.5 * float((np.asarray(entropy) * rec).sum() / gen.sum())
  np.testing.assert_allclose(float(loss(plain) - loss(bonus)), expected, rtol=1e-4)
  changed = np.abs(grad(bonus) - grad(plain)) > 1e-7
  assert changed[np.asarray(ep.is_recovery)].any() and not changed[~np.asarray(ep.is_recovery)].any()
  # None: recovery rollouts carry ppo.entropy_coef like the others (one aggregate).
  same = ppo_step.PPOConfig(rollout=SPEC, entropy_coef=0.5, recovery_entropy_coef=0.5)
  np.testing.assert_allclose(float(loss(same)),
                             float(loss(ppo_step.PPOConfig(rollout=SPEC, entropy_coef=0.5))),
                             rtol=1e-6)


def test_grpo_prefilled_tokens_get_zero_gradient():
  ep, logits = episodes_and_logits()
  mb = _minibatch(ep)
  mb['advantages'] = jnp.linspace(-1.0, 1.0, ep.tokens.shape[0])
  config = grpo_step.GRPOConfig(rollout=fx.rollout_spec(group_size=2), beta=0.04)
  grad = jax.grad(lambda lg: grpo_step.grpo_minibatch_loss(
      token_logprobs(lg, ep.tokens, config.rollout.sampling.temperature), mb, config)[0])(logits)
  per_token = np.abs(np.asarray(grad)).sum(-1)
  gen = np.asarray(ep.generated_mask, bool)
  forced = np.asarray(ep.response_mask, bool) & ~gen
  assert (per_token[forced] == 0).all() and (per_token[gen] > 0).all()


def test_score_goes_on_the_eos_token_not_the_padding():
  ep, _ = episodes_and_logits()
  gen = np.asarray(ep.generated_mask)
  scores = jnp.arange(1.0, gen.shape[0] + 1.0)
  rewards, _ = token_rewards.kl_shaped_rewards(scores, ep.sampler_logprobs, ep.sampler_logprobs,
                                               ep.generated_mask, 0.0)
  rewards = np.asarray(rewards)
  tokens, ended = np.asarray(ep.tokens), np.asarray(ep.ended_with_eos)
  for row in range(gen.shape[0]):
    last = np.nonzero(gen[row])[0][-1]
    assert rewards[row, last] == scores[row] and np.count_nonzero(rewards[row]) == 1
    if ended[row]:
      assert tokens[row, last] == fx.ENV.eos_id


def test_pad_equal_to_eos_keeps_real_eos_tokens():
  models, _, state = fx.make_state(0.05)
  eos = fx.ENV.eos_id
  spec = fx.rollout_spec(sampling=SamplingConfig(max_new_tokens=12, temperature=1.0, eos_id=eos,
                                                 pad_id=eos))
  ep = jax.jit(lambda p, b, r: rl_episodes.sample_episodes(models.policy, p, b, r, spec))(
      state.params['policy'], BATCH, jax.random.PRNGKey(0))
  tokens, resp = np.asarray(ep.tokens), np.asarray(ep.response_mask)
  gen = np.asarray(ep.generated_mask)
  ended = np.asarray(ep.ended_with_eos)
  assert ended.any(), 'a random policy over ~40 words emits EOS within 12 tokens'
  for row in np.nonzero(ended)[0]:
    first_eos = np.nonzero(tokens[row] == eos)[0][0]
    assert resp[row, first_eos] == 1 and resp[row, first_eos + 1:].sum() == 0
    assert resp[row, :first_eos + 1].all()
    # trl#6357: the loss mask keeps the final EOS too (else the model never learns to stop).
    assert gen[row, first_eos] == 1


def test_the_recovery_config_reaches_the_rollouts_and_the_loss():
  from configs import ppo_recovery
  from deepalign.train.rl import stage as rl
  config = ppo_recovery.get_config('toy')
  tokenizer = types.SimpleNamespace(eos_ids=(2,), eos_id=2, pad_id=0)
  spec = rl.rollout_spec(config, tokenizer)
  # k ~ U{1..8}: every recovery rollout starts inside the harmful answer.
  assert (spec.depth_distribution, spec.min_depth, spec.max_depth) == ('uniform', 1, 8)
  assert rl.ppo_config(config, spec).recovery_entropy_coef is None  # < 0: ppo.entropy_coef
  config.recovery.entropy_coef = 0.1
  assert rl.ppo_config(config, spec).recovery_entropy_coef == 0.1
