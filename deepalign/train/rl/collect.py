"""What both RL steps do before their losses differ: sample, score, old and reference log-probs."""

from typing import Any, Mapping, NamedTuple

import jax

from deepalign.train.rl import episodes as rl_episodes
from deepalign.train.rl.episodes import Episodes, RolloutSpec, Scores
from deepalign.train.rl.state import RLModels, RLState


class Collected(NamedTuple):
  """One batch of episodes with everything the updates hold fixed.

  old_entropy [E, N]: the sampling policy's entropy at each response token (metrics);
  old_hidden [E, N, D]: its final hidden states there (a value head on the trunk reads them),
  or None when no policy forward ran (`RolloutSpec.logprobs_from_sampler` with a separate or
  no value model); old_logprobs, ref_logprobs [E, N] at the sampling temperature;
  n_ordinary: ordinary rows at the front (static).
  """
  episodes: Episodes
  scores: Scores
  old_entropy: jax.Array
  old_hidden: jax.Array | None
  old_logprobs: jax.Array
  ref_logprobs: jax.Array
  n_ordinary: int


def collect(models: RLModels, state: RLState, batch: Mapping[str, Any], key: jax.Array,
            spec: RolloutSpec) -> Collected:
  """Ordinary + recovery rollouts of the current policy, scored, with old / reference log-probs."""
  episodes = rl_episodes.sample_episodes(models.policy, state.params['policy'], batch, key, spec)
  return collect_from_episodes(models, state.params, state.frozen, episodes,
                               rl_episodes.num_ordinary(batch, spec), spec)


def collect_from_episodes(models: RLModels, params: Mapping[str, Any],
                          frozen: Mapping[str, Any], episodes: Episodes, n_ordinary: int,
                          spec: RolloutSpec) -> Collected:
  """`collect` after the sampling: scores, old / reference log-probs of given episodes."""
  policy_params = params['policy']
  scores = rl_episodes.score_episodes(models.reward, frozen['reward'], models.judge,
                                      frozen['judge'], episodes, n_ordinary, spec)
  temperature, chunk, g = spec.sampling.temperature, spec.logits_chunk_size, spec.group_size
  # Every forward over the episodes runs each group's prompt once (`rl_episodes.sequence_hidden`).
  ref_logprobs = rl_episodes.response_logprobs(models.policy, frozen['reference'], episodes,
                                               temperature, chunk, g)
  old_hidden = None
  # With top-k / top-p the policy is the filtered distribution (rollout/logprobs.py); a full
  # forward's logits differ from the KV cache's by rounding, which can move a sampled token
  # just out of the kept set (log-prob -1e30, a k1 penalty of 1e30): take the sampler's.
  if spec.logprobs_from_sampler or spec.sampling.filtered:
    old_logprobs, old_entropy = episodes.sampler_logprobs, episodes.sampler_entropy
    if models.value is None and 'value' in params:
      # A value head on the policy's trunk still needs the trunk's hidden states.
      old_hidden = rl_episodes.response_hidden(models.policy, policy_params, episodes, g)
  else:
    old_logprobs, old_entropy, old_hidden = rl_episodes.response_token_stats(
        models.policy, policy_params, episodes, temperature, chunk, entropy='value',
        group_size=g)
  return Collected(episodes, scores, old_entropy, old_hidden, old_logprobs, ref_logprobs,
                   n_ordinary)
