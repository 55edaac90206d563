"""`grpo_step(state, batch) -> (state, metrics)`: one GRPO iteration as ONE jitted function.

Shao et al. 2024 (DeepSeekMath): G samples per prompt, advantages relative to the group,
no value model, clipped ratio, and the k3 KL to the reference inside the loss. Sampling and
scoring (incl. recovery rollouts, sampled in groups of G as well) are `rl_episodes`' —
the same code the PPO step runs.
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from deepalign.errors import UserError
from deepalign.objectives import aggregation as agg
from deepalign.objectives import grpo as grpo_lib
from deepalign.objectives import kl as kl_lib
from deepalign.train.rl import collect as rl_collect
from deepalign.train.rl import episodes as rl_episodes
from deepalign.train.rl import minibatches as rl_minibatches
from deepalign.train.rl.episodes import RolloutSpec
from deepalign.train.rl.state import RLModels, RLState

PyTree = Any


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """GRPO hyperparameters (defaults: TRL's GRPOConfig).

  rollout.group_size: G >= 2. beta: coefficient of the k3 KL to the reference in the loss
  (0 drops it); the reported `kl` is that k3 estimate, summed per sequence and averaged
  over ordinary rollouts. scale_by_std: divide group-centred rewards by the group std
  (False = Dr. GRPO). aggregation: 'sequence_mean' (original GRPO) or 'token_mean' (DAPO) or
  'token_sum_normalized'. epochs x minibatches: updates per batch (TRL's num_iterations).
  """
  rollout: RolloutSpec
  beta: float = 0.04
  clip_eps: float = 0.2
  clip_eps_high: float | None = None
  scale_by_std: bool = True
  epochs: int = 1
  minibatches: int = 1
  aggregation: str = 'sequence_mean'

  def __post_init__(self):
    if self.rollout.group_size < 2:
      raise UserError(f'grpo.group_size={self.rollout.group_size}: GRPO needs at least 2 '
                      'samples per prompt (one sample has no baseline).')
    agg.check_aggregation(self.aggregation)
    for name in ('epochs', 'minibatches'):
      if getattr(self, name) < 1:
        raise UserError(f'grpo.{name}={getattr(self, name)} must be >= 1.')


def grpo_minibatch_loss(logprobs: jax.Array, mb: Mapping[str, Any], config: GRPOConfig,
                        normalizer: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """The GRPO loss from the policy's log-probs of the response tokens [E, N] (of the
  sampler's distribution: `response_token_stats`); only `generated_mask` tokens count.
  mb: 'episodes', 'old_logprobs', 'ref_logprobs', 'advantages' [E]. normalizer:
  'token_sum_normalized''s count of the WHOLE batch (None = this minibatch's tokens)."""
  episodes = mb['episodes']
  mask = episodes.generated_mask
  if normalizer is None or config.aggregation != 'token_sum_normalized':
    normalizer = rl_minibatches.loss_normalizer(config.aggregation, mask)
  loss, metrics = grpo_lib.grpo_loss(
      logprobs, mb['advantages'], mask, old_logprobs=mb['old_logprobs'],
      ref_logprobs=mb['ref_logprobs'], beta=config.beta, clip_eps=config.clip_eps,
      clip_eps_high=config.clip_eps_high, mode=config.aggregation,
      normalizer=normalizer)
  return loss, {'loss/policy': loss, **{f'train/{k}': v for k, v in metrics.items()}}


def make_grpo_step(models: RLModels, config: GRPOConfig, tx: optax.GradientTransformation,
                   state_shardings: Any = None, metrics_sharding: Any = None,
                   schedule: optax.Schedule | None = None
                   ) -> Callable[[RLState, Mapping[str, jax.Array]], tuple[RLState, dict]]:
  """Builds the jitted `grpo_step(state, batch) -> (state, metrics)`; `state` is donated.

  With `state_shardings` (and `metrics_sharding`) the new state keeps the old one's layout on
  the mesh, so donation reuses its buffers and the next call does not recompile.
  schedule: the optimizer's learning-rate schedule; given, the metrics carry the applied
  `learning_rate` and the optimizer's update count (`rl_minibatches.optimize`).
  """

  def minibatch_loss(params: PyTree, mb: dict, normalizer: jax.Array | None
                     ) -> tuple[jax.Array, dict]:
    sampling = config.rollout.sampling
    # The sampler's (filtered, when top_k / top_p are on) distribution is the policy.
    # One minibatch keeps the episodes in order (rl_minibatches.shuffled_minibatches): the
    # groups stay contiguous and each prompt runs once.
    group_size = config.rollout.group_size if config.minibatches == 1 else 1
    logprobs, _, _ = rl_episodes.response_token_stats(
        models.policy, params['policy'], mb['episodes'], sampling.temperature,
        config.rollout.logits_chunk_size, **sampling.filters, group_size=group_size)
    return grpo_minibatch_loss(logprobs, mb, config, normalizer)

  def step(state: RLState, batch: Mapping[str, jax.Array]) -> tuple[RLState, dict]:
    key_sample, key_shuffle = jax.random.split(jax.random.fold_in(state.rng, state.step))
    c = rl_collect.collect(models, state, batch, key_sample, config.rollout)
    episodes, scores, n_ordinary = c.episodes, c.scores, c.n_ordinary
    old_logprobs, ref_logprobs = c.old_logprobs, c.ref_logprobs
    mask = episodes.generated_mask
    # Groups are contiguous and ordinary / recovery rows never share a group.
    advantages = grpo_lib.group_advantages(scores.score, config.rollout.group_size,
                                           config.scale_by_std)
    data = {'episodes': episodes, 'old_logprobs': old_logprobs, 'ref_logprobs': ref_logprobs,
            'advantages': advantages}
    # One token count for the whole batch, whatever the minibatching (issue 17 item 4).
    normalizer = rl_minibatches.loss_normalizer(config.aggregation, mask)
    params, opt_state, update_metrics = rl_minibatches.optimize(
        state.params, state.opt_state, data, key_shuffle,
        lambda params, mb: minibatch_loss(params, mb, normalizer), tx, config.epochs,
        config.minibatches, schedule)

    kl = jnp.where(mask > 0, kl_lib.kl_estimate(old_logprobs, ref_logprobs, 'k3'), 0.0)
    metrics = {
        **rl_episodes.episode_metrics(episodes, scores, n_ordinary),
        **update_metrics,
        'loss': update_metrics['loss/policy'],  # the loop's progress line
        'kl': jnp.mean(jnp.sum(kl, axis=1)[:n_ordinary]),
        'kl/k3_per_token': agg.masked_mean(kl, mask),
        'policy/entropy': agg.masked_mean(c.old_entropy, mask),
        'advantages/abs_mean': jnp.mean(jnp.abs(advantages)),
    }
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  if state_shardings is None:
    return jax.jit(step, donate_argnums=(0,))
  return jax.jit(step, donate_argnums=(0,), out_shardings=(state_shardings, metrics_sharding))
