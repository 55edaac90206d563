"""Regression tests of the RL correctness traps of issue 17: the bugs found on review of
deepalign and the bugs other RL libraries shipped in 2025-26. Each test names its trap; the
README's "Correctness" section lists them. Tiny shapes, and one jitted sampler shared by the
filter tests.
"""

import functools
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.rollout.filters import top_k_filter, top_p_filter
from deepalign.rollout.sampling_config import SamplingConfig
from deepalign.train.rl import episodes as rl_episodes

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


TOP_K, TOP_P = 8, 0.5  # both act: on the near-uniform random policy top-p keeps ~4 of the 8


def _filtered_log_softmax(logits, top_k, top_p):
  """By hand: the tempered logits, truncated as the sampler truncates, renormalized."""
  z = logits.astype(jnp.float32) / TEMPERATURE
  return jax.nn.log_softmax(top_p_filter(top_k_filter(z, top_k), top_p), axis=-1)


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
