"""GRPO's G samples of a prompt: the prefill and every forward over the episodes run each
prompt once per group, with the numbers of running it once per row."""

import dataclasses
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.errors import UserError
from deepalign.rollout.generate import generate
from deepalign.train.rl import collect as rl_collect
from deepalign.train.rl import episodes as rl_episodes
from deepalign.train.rl import minibatches as rl_minibatches

_spec = importlib.util.spec_from_file_location(
    'rl_fixtures', pathlib.Path(__file__).with_name('fixtures.py'))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)

G = 3
SPEC = fx.rollout_spec(group_size=G, depth_distribution='fixed', depths=(2,))
BATCH = jax.tree.map(jnp.asarray, fx.rl_batch(fx.ENV, 2, 2))  # left-padded, with recovery rows


def test_grouped_prefill_samples_the_same_tokens():
  models, _, state = fx.make_state(0.05, seed=1)
  params = state.params['policy']
  prompts = jnp.repeat(BATCH['prompt_tokens'], G, axis=0)
  mask = jnp.repeat(BATCH['prompt_mask'], G, axis=0)
  run = lambda g: generate(models.policy, params, prompts, mask, jax.random.key(4),
                           SPEC.sampling, group_size=g)
  grouped, plain = run(G), run(1)
  np.testing.assert_array_equal(grouped.tokens, plain.tokens)
  np.testing.assert_allclose(grouped.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)
  with pytest.raises(UserError, match='group_size'):
    generate(models.policy, params, prompts[:5], mask[:5], jax.random.key(4), SPEC.sampling,
             group_size=G)


def test_scores_and_logprobs_of_grouped_episodes_equal_the_per_row_ones():
  models, _, state = fx.make_state(0.05, seed=2)
  params, frozen = state.params, state.frozen

  @jax.jit
  def both(params, frozen, key):
    episodes = rl_episodes.sample_episodes(models.policy, params['policy'], BATCH, key, SPEC)
    n = rl_episodes.num_ordinary(BATCH, SPEC)
    per_row = dataclasses.replace(SPEC, group_size=1)
    return [rl_collect.collect_from_episodes(models, params, frozen, episodes, n, spec)
            for spec in (SPEC, per_row)]

  grouped, plain = both(params, frozen, jax.random.key(5))
  assert grouped.episodes.tokens.shape[0] == (2 + 2) * G
  np.testing.assert_allclose(grouped.scores.reward_model, plain.scores.reward_model,
                             rtol=1e-5, atol=1e-5)
  mask = np.asarray(grouped.episodes.response_mask) > 0
  for a, b in [(grouped.ref_logprobs, plain.ref_logprobs),
               (grouped.old_logprobs, plain.old_logprobs)]:
    np.testing.assert_allclose(np.asarray(a)[mask], np.asarray(b)[mask], rtol=1e-5, atol=1e-5)


def test_one_minibatch_keeps_the_episode_order():
  data = {'x': jnp.arange(12).reshape(6, 2)}
  one = rl_minibatches.shuffled_minibatches(jax.random.key(0), data, 1)
  np.testing.assert_array_equal(one['x'][0], data['x'])
  two = rl_minibatches.shuffled_minibatches(jax.random.key(0), data, 2)
  assert two['x'].shape == (2, 3, 2)
  assert sorted(np.asarray(two['x'][:, :, 0]).ravel().tolist()) == list(range(0, 12, 2))
