"""The judge runs only on the rows that need it, and ordinary + recovery rollouts share one
decode loop (issue 15: 'judge only the rows that need it', 'ONE generate call')."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.models.transformer import init_params
from deepalign.train.rl import episodes as rl_episodes

_spec = importlib.util.spec_from_file_location(
    'rl_fixtures', pathlib.Path(__file__).with_name('fixtures.py'))
fx = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fx)


class CountingJudge:
  """The env judge, recording how many rows each call gets (shapes are static under jit)."""

  def __init__(self):
    self.rows = []
    self.env_judge = fx.EnvJudge(fx.ENV)

  def __call__(self, params, prompt, prompt_mask, response, response_mask):
    self.rows.append(prompt.shape[0])
    return self.env_judge(params, prompt, prompt_mask, response, response_mask)


def _episodes_and_scores(judge_ordinary: bool):
  spec = fx.rollout_spec(judge_ordinary=judge_ordinary)
  policy, reward = fx.tiny('lm'), fx.tiny('score')
  key = jax.random.PRNGKey(0)
  batch = fx.rl_batch(fx.ENV, 6, 4)
  episodes = rl_episodes.sample_episodes(policy, init_params(policy, key), batch, key, spec)
  judge = CountingJudge()
  n = rl_episodes.num_ordinary(batch, spec)
  scores = rl_episodes.score_episodes(reward, init_params(reward, key), judge, {}, episodes, n,
                                      spec)
  return episodes, scores, judge, n


def test_judge_sees_recovery_rows_only_when_ordinary_harm_is_not_asked_for():
  episodes, scores, judge, n = _episodes_and_scores(judge_ordinary=False)
  assert judge.rows == [4] and n == 6
  all_episodes, all_scores, all_judge, _ = _episodes_and_scores(judge_ordinary=True)
  assert all_judge.rows == [10]
  # Same rollouts, same recovery rewards: only the metric rows differ.
  np.testing.assert_array_equal(episodes.tokens, all_episodes.tokens)
  np.testing.assert_allclose(scores.score, all_scores.score)
  metrics = rl_episodes.episode_metrics(episodes, scores, n)
  full = rl_episodes.episode_metrics(all_episodes, all_scores, n)
  assert 'harm/ordinary' in full and 'harm/ordinary' not in metrics
  assert metrics['recovery/harm_rate'] == full['recovery/harm_rate']


def test_ordinary_and_recovery_rows_come_from_one_decode_loop():
  spec = fx.rollout_spec()
  policy = fx.tiny('lm')
  key = jax.random.PRNGKey(0)
  batch = fx.rl_batch(fx.ENV, 6, 4)
  params = init_params(policy, key)
  jaxpr = str(jax.make_jaxpr(
      lambda p: rl_episodes.sample_episodes(policy, p, batch, key, spec))(params))
  assert jaxpr.count('name=generate') == 1, jaxpr.count('name=generate')
  episodes = rl_episodes.sample_episodes(policy, params, batch, key, spec)
  # Ordinary rows force nothing; recovery rows force their depth's tokens (as before).
  assert np.all(np.asarray(episodes.response_mask - episodes.generated_mask)[:6] == 0)
  forced = np.asarray(jnp.sum(episodes.response_mask - episodes.generated_mask, axis=1))[6:]
  np.testing.assert_array_equal(forced, np.asarray(episodes.depth)[6:])
