"""The PPO iteration cut into three separately-jitted pieces, to say where its time goes.

The fused `make_ppo_step` is one XLA program, so its parts cannot be timed from outside.
These pieces run the same library functions on the same inputs, each under its own `jax.jit`:

  sample:  `rl_episodes.sample_episodes` (prefill + 64-step KV-cache decode)
  score:   reward model + harm judge, old (unless taken from the sampler) / reference
           log-prob and value forwards, KL-shaped rewards, GAE and whitening
  update:  `rl_minibatches.optimize` over `ppo_step.ppo_loss` (epochs x minibatches of
           forward + backward + AdamW)

Their times add up to roughly, not exactly, the fused step's: a single program saves the
dispatch between pieces and lets XLA schedule across them. Shares are therefore reported as
each piece's share of the pieces' sum. The update piece assumes a separate value model
(`RLModels.value`), as W-tiny has.
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
import optax

from deepalign.objectives import gae as gae_lib
from deepalign.objectives import token_rewards
from deepalign.objectives import whitening
from deepalign.rollout.logprobs import token_logprobs
from deepalign.train import ppo_step as ppo_lib
from deepalign.train import rl_episodes
from deepalign.train import rl_minibatches
from deepalign.train.rl_episodes import Episodes
from deepalign.train.rl_state import RLModels, RLState

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Pieces:
  """sample(policy_params, batch, key) -> Episodes;
  score(params, frozen, kl_coef, episodes) -> data (the minibatch inputs);
  update(params, opt_state, data, key) -> (params, opt_state, metrics)."""
  sample: Callable[[PyTree, Mapping[str, jax.Array], jax.Array], Episodes]
  score: Callable[[PyTree, PyTree, jax.Array, Episodes], dict]
  update: Callable[[PyTree, optax.OptState, dict, jax.Array], tuple[PyTree, optax.OptState, dict]]


def make_pieces(models: RLModels, config: ppo_lib.PPOConfig, tx: optax.GradientTransformation,
                n_ordinary: int) -> Pieces:
  """The three jitted pieces of one PPO iteration (none donates: each is re-run on one input)."""
  if models.value is None:
    raise ValueError('ppo_pieces needs a separate value model (RLModels.value), as W-tiny has')
  spec = config.rollout
  temperature = spec.sampling.temperature

  def sample(policy_params, batch, key):
    return rl_episodes.sample_episodes(models.policy, policy_params, batch, key, spec)

  def score(params, frozen, kl_coef, episodes):
    scores = rl_episodes.score_episodes(models.reward, frozen['reward'], models.judge,
                                        frozen['judge'], episodes, n_ordinary, spec)
    mask = episodes.generated_mask
    if spec.logprobs_from_sampler:  # as `rl_collect.collect`: no policy forward
      old_logprobs = episodes.sampler_logprobs
    else:
      old_logits, _ = rl_episodes.response_logits(models.policy, params['policy'], episodes)
      old_logprobs = token_logprobs(old_logits, episodes.tokens, temperature)
    ref_logprobs = rl_episodes.response_logprobs(models.policy, frozen['reference'], episodes,
                                                 temperature)
    old_values = rl_episodes.response_values(models.value, params['value'], episodes)
    reward_kl_coef = kl_coef if config.kl_penalty_in == 'reward' else 0.0
    rewards, _ = token_rewards.kl_shaped_rewards(scores.score, old_logprobs, ref_logprobs, mask,
                                                 reward_kl_coef, config.kl_estimator)
    if config.whiten_rewards:
      rewards = whitening.masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = gae_lib.gae_advantages(rewards, old_values, mask, config.gamma,
                                                 config.lam)
    if config.whiten_advantages:
      advantages = whitening.masked_whiten(advantages, mask)
    return {'episodes': episodes, 'old_logprobs': old_logprobs, 'ref_logprobs': ref_logprobs,
            'old_values': old_values, 'advantages': advantages, 'returns': returns}

  def update(params, opt_state, data, key):
    def loss_fn(params, mb):
      logits, _ = rl_episodes.response_logits(models.policy, params['policy'], mb['episodes'])
      values = rl_episodes.response_values(models.value, params['value'], mb['episodes'])
      return ppo_lib.ppo_loss(logits, values, mb, config, config.kl_coef)
    return rl_minibatches.optimize(params, opt_state, data, key, loss_fn, tx, config.epochs,
                                   config.minibatches)

  return Pieces(sample=jax.jit(sample), score=jax.jit(score), update=jax.jit(update))


def piece_inputs(pieces: Pieces, state: RLState, batch: Mapping[str, jax.Array], key: jax.Array
                 ) -> tuple[Episodes, dict]:
  """Episodes and minibatch data from `state`, so every piece is timed on real inputs."""
  episodes = pieces.sample(state.params['policy'], batch, key)
  data = pieces.score(state.params, state.frozen, state.kl_ctl.value, episodes)
  return episodes, data

