"""The PPO iteration cut into three separately-jitted pieces, to say where its time goes.

The fused `make_ppo_step` is one XLA program, so its parts cannot be timed from outside.
These pieces run the same library functions on the same inputs, each under its own `jax.jit`:

  sample:  `rl_episodes.sample_episodes` (prefill + 64-step KV-cache decode)
  score:   `rl_collect.collect_from_episodes` (reward model + harm judge, old (unless taken
           from the sampler) / reference log-prob forwards), the value forward and
           `ppo_step.minibatch_data` (KL-shaped rewards, GAE and whitening)
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

from deepalign.train.rl import ppo_step as ppo_lib
from deepalign.train.rl import collect as rl_collect
from deepalign.train.rl import episodes as rl_episodes
from deepalign.train.rl import minibatches as rl_minibatches
from deepalign.train.rl.episodes import Episodes
from deepalign.train.rl.state import RLModels, RLState

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

  def sample(policy_params, batch, key):
    return rl_episodes.sample_episodes(models.policy, policy_params, batch, key, spec)

  def score(params, frozen, kl_coef, episodes):
    c = rl_collect.collect_from_episodes(models, params, frozen, episodes, n_ordinary, spec)
    old_values = rl_episodes.response_values(models.value, params['value'], episodes)
    return ppo_lib.minibatch_data(config, c, old_values, kl_coef)[0]

  def update(params, opt_state, data, key):
    def loss_fn(params, mb):
      logprobs, entropy, _ = rl_episodes.response_token_stats(
          models.policy, params['policy'], mb['episodes'], spec.sampling.temperature,
          spec.logits_chunk_size, ppo_lib.entropy_mode(config), **spec.sampling.filters)
      values = rl_episodes.response_values(models.value, params['value'], mb['episodes'])
      return ppo_lib.ppo_loss(logprobs, entropy, values, mb, config, config.kl_coef)
    return rl_minibatches.optimize(params, opt_state, data, key, loss_fn, tx, config.epochs,
                                   config.minibatches)

  return Pieces(sample=jax.jit(sample), score=jax.jit(score), update=jax.jit(update))


def piece_inputs(pieces: Pieces, state: RLState, batch: Mapping[str, jax.Array], key: jax.Array
                 ) -> tuple[Episodes, dict]:
  """Episodes and minibatch data from `state`, so every piece is timed on real inputs."""
  episodes = pieces.sample(state.params['policy'], batch, key)
  data = pieces.score(state.params, state.frozen, state.kl_ctl.value, episodes)
  return episodes, data

