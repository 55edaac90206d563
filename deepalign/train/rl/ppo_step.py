"""`ppo_step(state, batch) -> (state, metrics)`: one PPO iteration as ONE jitted function.

Inside (DESIGN.md "The fused step"): sample ordinary and recovery rollouts with the KV cache;
score them (reward model / harm judge); old, reference log-probs and values; KL-shaped token
rewards; GAE; whitening; then `epochs x minibatches` clipped policy + clipped value updates
under `lax.scan`. Every metric leaves as an array: nothing syncs to the host mid-step.
The key of step s is fold_in(state.rng, s), so a resumed run replays the same rollouts.
"""

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from deepalign.errors import UserError
from deepalign.objectives import aggregation as agg
from deepalign.objectives import gae as gae_lib
from deepalign.objectives import kl as kl_lib
from deepalign.objectives import ppo as ppo_lib
from deepalign.objectives import token_rewards
from deepalign.objectives import whitening
from deepalign.train.rl import collect as rl_collect
from deepalign.train.rl import episodes as rl_episodes
from deepalign.train.rl import minibatches as rl_minibatches
from deepalign.train.rl.episodes import Episodes, RolloutSpec
from deepalign.train.rl.state import RLModels, RLState

PyTree = Any


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """PPO hyperparameters (defaults: TRL's PPOConfig where it has one).

  kl_coef: initial beta; kl_estimator: 'k1' | 'k2' | 'k3' (objectives/kl.py);
  kl_penalty_in: 'reward' (per-token penalty -beta*kl_t in the reward, Ziegler et al.; TRL)
    or 'loss' (beta * aggregated kl added to the loss, differentiated through log pi_theta).
    'loss' with k1 is refused: grad k1 = grad log pi, whose expectation under pi is 0, so the
    term does nothing on-policy (issue 17 item 3). In the loss, k2 is the estimator whose
    gradient is the reverse KL's: E_pi[logr grad log pi] = grad KL(pi || pi_ref); k3's is
    E_pi[(1 - pi_ref/pi) grad log pi] = grad KL(pi_ref || pi), the forward KL's (GRPO's
    convention; Shah et al. 2025, "A Comedy of Estimators", arXiv 2512.21852). Both are
    per-token (pathwise) gradients: they leave out how a token changes the later tokens' KL,
    which the reward placement's policy gradient carries (objectives/kl.py).
    No bias correction or importance weight is applied to the KL term on any path: the
    estimator and its placement are exactly these two fields. The reported `kl` is this estimator,
    summed over each response's generated tokens and averaged over ordinary rollouts: the KL
    that is optimized.
  adaptive_kl_target: None = fixed beta; else Ziegler's controller with this target KL
    (per sequence) and `adaptive_kl_horizon` (in episodes).
  score_clip: clip sequence scores to [-c, c] (None = off).
  aggregation: 'token_mean' | 'sequence_mean' | 'token_sum_normalized' (objectives/aggregation.py).
  """
  rollout: RolloutSpec
  kl_coef: float = 0.05
  kl_estimator: str = 'k1'
  kl_penalty_in: str = 'reward'
  adaptive_kl_target: float | None = None
  adaptive_kl_horizon: float = 10000.0
  gamma: float = 1.0
  lam: float = 0.95
  whiten_rewards: bool = False
  whiten_advantages: bool = True
  score_clip: float | None = None
  epochs: int = 1
  minibatches: int = 2
  clip_eps: float = 0.2
  value_clip_eps: float | None = 0.2
  vf_coef: float = 0.1
  entropy_coef: float = 0.0
  recovery_entropy_coef: float | None = None  # on recovery rollouts' tokens; None = entropy_coef
  aggregation: str = 'token_mean'

  def __post_init__(self):
    if self.kl_estimator not in kl_lib.KL_ESTIMATORS:
      raise UserError(f'ppo.kl_estimator={self.kl_estimator!r}; use one of {kl_lib.KL_ESTIMATORS}.')
    if self.kl_penalty_in not in ('reward', 'loss'):
      raise UserError(f"ppo.kl_penalty_in={self.kl_penalty_in!r}; use 'reward' or 'loss'.")
    if self.kl_penalty_in == 'loss' and self.kl_estimator == 'k1':
      raise UserError("ppo.kl_penalty_in='loss' with ppo.kl_estimator='k1' has zero expected "
                      'gradient on-policy (E_pi[grad log pi] = 0): the KL would do nothing. Use '
                      "kl_estimator='k2' (its gradient is the reverse KL's) in the loss, or "
                      "k1 with kl_penalty_in='reward'.")
    agg.check_aggregation(self.aggregation)
    for name in ('epochs', 'minibatches'):
      if getattr(self, name) < 1:
        raise UserError(f'ppo.{name}={getattr(self, name)} must be >= 1.')


def kl_per_sequence(kl: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-token KL estimates [E, N] summed over each response's actions -> [E]."""
  return jnp.sum(jnp.where(mask > 0, kl, 0.0), axis=1)


def masked_kl(logprobs: jax.Array, ref_logprobs: jax.Array, mask: jax.Array,
              estimator: str) -> jax.Array:
  """The per-token KL estimate [E, N] on the mask, 0 (with zero gradient) elsewhere.

  The inputs are zeroed off the mask BEFORE the estimate: a forced token the sampler's top-k /
  top-p dropped has log-prob -1e30, whose k3 is inf, and inf * 0 is nan in the backward. A
  generated token the updated (filtered) policy no longer keeps has probability 0: its
  importance weight pi_theta / pi_old is 0, so it drops out of the KL term too.
  """
  kept = (mask > 0) & (logprobs > kl_lib.DROPPED_LOGPROB)
  kl = kl_lib.kl_estimate(jnp.where(kept, logprobs, 0.0), jnp.where(kept, ref_logprobs, 0.0),
                          estimator)
  return jnp.where(kept, kl, 0.0)


def ppo_loss(logprobs: jax.Array, token_entropy: jax.Array, values: jax.Array,
             mb: Mapping[str, Any], config: PPOConfig, kl_coef: jax.Array | float,
             normalizer: jax.Array | None = None) -> tuple[jax.Array, dict]:
  """The PPO minibatch loss from the policy's log-probs and entropies at the response tokens
  [E, N] (of the sampler's distribution: `response_token_stats`) and values [E, N].

  pg + vf_coef * vf - entropy_coef * H (+ beta * KL when kl_penalty_in == 'loss'), every term
  aggregated over `generated_mask` only: prefilled (forced) tokens and padding get no gradient.
  Recovery rollouts' tokens carry `recovery_entropy_coef` instead of `entropy_coef` when it is
  set: exploration at harmful prefixes, where a policy that never leaves a harmful answer it has
  started would otherwise never sample a recovery.
  mb: 'episodes', 'old_logprobs', 'ref_logprobs', 'old_values', 'advantages', 'returns'.
  normalizer: 'token_sum_normalized''s count, of the WHOLE batch (`rl_minibatches.
  loss_normalizer` before the split); None = this minibatch's tokens (a whole batch).
  """
  episodes = mb['episodes']
  mask = episodes.generated_mask
  norm = rl_minibatches.loss_normalizer(config.aggregation, mask) if normalizer is None else (
      normalizer if config.aggregation == 'token_sum_normalized' else None)
  pg, pg_metrics = ppo_lib.policy_loss(logprobs, mb['old_logprobs'], mb['advantages'], mask,
                                       config.clip_eps, mode=config.aggregation, normalizer=norm)
  vf, vf_metrics = ppo_lib.value_loss(values, mb['old_values'], mb['returns'], mask,
                                      config.value_clip_eps, mode=config.aggregation,
                                      normalizer=norm)
  rec_coef = config.entropy_coef if config.recovery_entropy_coef is None else (
      config.recovery_entropy_coef)
  if config.entropy_coef == 0 and rec_coef == 0:
    # Then the entropy is a metric only (and `entropy_mode` builds no backward for it).
    token_entropy = jax.lax.stop_gradient(token_entropy)
  entropy = agg.aggregate(token_entropy, mask, config.aggregation, norm)
  if rec_coef == config.entropy_coef:
    bonus = config.entropy_coef * entropy
  else:
    coef = jnp.where(episodes.is_recovery, rec_coef, config.entropy_coef)[:, None]
    bonus = agg.aggregate(coef * token_entropy, mask, config.aggregation, norm)
  loss = pg + config.vf_coef * vf - bonus
  if config.kl_penalty_in == 'loss':
    kl = masked_kl(logprobs, mb['ref_logprobs'], mask, config.kl_estimator)
    loss = loss + kl_coef * agg.aggregate(kl, mask, config.aggregation, norm)
  return loss, {'loss/policy': pg, 'loss/value': vf, 'loss/total': loss,
                'policy/entropy_train': entropy, **pg_metrics, **vf_metrics}


def entropy_mode(config: PPOConfig) -> str:
  """'grad' with an entropy bonus on (any rows), else 'value': the entropy is then a metric."""
  rec_coef = config.entropy_coef if config.recovery_entropy_coef is None else (
      config.recovery_entropy_coef)
  return 'value' if config.entropy_coef == 0 and rec_coef == 0 else 'grad'


def _values(models: RLModels, params: PyTree, episodes: Episodes, hidden: jax.Array
            ) -> jax.Array:
  """V before each response token [E, N]: a separate value model, or the head on the trunk."""
  if models.value is None:
    kernel = params['value']['kernel']
    return jnp.einsum('end,dk->enk', hidden.astype(jnp.float32),
                      kernel.astype(jnp.float32))[..., 0]
  return rl_episodes.response_values(models.value, params['value'], episodes)


def minibatch_data(config: PPOConfig, c: rl_collect.Collected, old_values: jax.Array,
                   kl_coef: jax.Array) -> tuple[dict, jax.Array]:
  """What the minibatch updates hold fixed: episodes, old / reference log-probs, old values
  [E, N], advantages and returns [E, N] (score clipping, KL-shaped rewards, GAE, whitening);
  and the per-token KL estimate [E, N] that entered the rewards (for the metrics).

  Whitening (`whiten_advantages`, `whiten_rewards`) is per source: the ordinary rows by their
  own mean / std; recovery rows are not whitened (their rewards -lambda_rec * h are already on
  a fixed scale, h in [0, 1]), so lambda_rec is the recovery advantage's size in units of one
  std of the whitened reward-model advantage, whatever the reward model's scale. Without
  recovery rows this is the old whole-batch whitening."""
  mask = c.episodes.generated_mask
  score = c.scores.score
  if config.score_clip is not None:
    score = jnp.clip(score, -config.score_clip, config.score_clip)
  reward_kl_coef = kl_coef if config.kl_penalty_in == 'reward' else 0.0
  rewards, kl = token_rewards.kl_shaped_rewards(score, c.old_logprobs, c.ref_logprobs, mask,
                                                reward_kl_coef, config.kl_estimator)
  # Whitening uses the ordinary (reward-model) rows' statistics and touches only them: the
  # recovery rows' -lambda_rec * h stays in its units, so lambda_rec's weight against a
  # whitened reward-model advantage does not depend on the reward model's scale (item 5).
  ordinary = jnp.arange(mask.shape[0]) < c.n_ordinary
  if config.whiten_rewards:
    rewards = whitening.whiten_rows(rewards, mask, ordinary, shift_mean=False)
  advantages, returns = gae_lib.gae_advantages(rewards, old_values, mask, config.gamma,
                                               config.lam)
  if config.whiten_advantages:
    advantages = whitening.whiten_rows(advantages, mask, ordinary)
  data = {'episodes': c.episodes, 'old_logprobs': c.old_logprobs,
          'ref_logprobs': c.ref_logprobs, 'old_values': old_values, 'advantages': advantages,
          'returns': returns}
  return data, kl


def make_ppo_step(models: RLModels, config: PPOConfig, tx: optax.GradientTransformation,
                   state_shardings: Any = None, metrics_sharding: Any = None,
                   schedule: optax.Schedule | None = None
                  ) -> Callable[[RLState, Mapping[str, jax.Array]], tuple[RLState, dict]]:
  """Builds the jitted `ppo_step(state, batch) -> (state, metrics)`; `state` is donated.

  With `state_shardings` (and `metrics_sharding`) the new state keeps the old one's layout on
  the mesh, so donation reuses its buffers and the next call does not recompile.
  schedule: the optimizer's learning-rate schedule; given, the metrics carry the applied
  `learning_rate` and the optimizer's update count (`rl_minibatches.optimize`).
  """

  def minibatch_loss(params: PyTree, mb: dict, kl_coef: jax.Array, normalizer: jax.Array | None
                     ) -> tuple[jax.Array, dict]:
    episodes = mb['episodes']
    sampling = config.rollout.sampling
    # The sampler's (filtered, when top_k / top_p are on) distribution is the policy.
    logprobs, token_entropy, hidden = rl_episodes.response_token_stats(
        models.policy, params['policy'], episodes, sampling.temperature,
        config.rollout.logits_chunk_size, entropy_mode(config), **sampling.filters)
    return ppo_loss(logprobs, token_entropy, _values(models, params, episodes, hidden), mb,
                    config, kl_coef, normalizer)

  def step(state: RLState, batch: Mapping[str, jax.Array]) -> tuple[RLState, dict]:
    key_sample, key_shuffle = jax.random.split(jax.random.fold_in(state.rng, state.step))
    c = rl_collect.collect(models, state, batch, key_sample, config.rollout)
    episodes, scores, n_ordinary = c.episodes, c.scores, c.n_ordinary
    mask = episodes.generated_mask
    old_values = _values(models, state.params, episodes, c.old_hidden)
    kl_coef = state.kl_ctl.value
    data, kl = minibatch_data(config, c, old_values, kl_coef)
    advantages, returns = data['advantages'], data['returns']
    # One token count for the whole batch, whatever the minibatching (item 4).
    normalizer = rl_minibatches.loss_normalizer(config.aggregation, mask)

    params, opt_state, update_metrics = rl_minibatches.optimize(
        state.params, state.opt_state, data, key_shuffle,
        lambda params, mb: minibatch_loss(params, mb, kl_coef, normalizer), tx, config.epochs,
        config.minibatches, schedule)

    kl_seq = kl_per_sequence(kl, mask)
    mean_kl = jnp.mean(kl_seq[:n_ordinary])
    if config.adaptive_kl_target is None:
      kl_ctl = state.kl_ctl
    else:
      kl_ctl = kl_lib.adaptive_kl_update(state.kl_ctl, mean_kl, n_ordinary,
                                         config.adaptive_kl_target, config.adaptive_kl_horizon)
    metrics = {
        **rl_episodes.episode_metrics(episodes, scores, n_ordinary),
        **update_metrics,
        'loss': update_metrics['loss/total'],  # the loop's progress line
        'kl': mean_kl,
        'kl/coef': kl_coef,
        f'kl/{config.kl_estimator}_per_token': agg.masked_mean(kl, mask),
        'policy/entropy': agg.masked_mean(c.old_entropy, mask),
        'value/explained_variance': ppo_lib.explained_variance(old_values, returns, mask),
        'value/mean': agg.masked_mean(old_values, mask),
        'advantages/mean': agg.masked_mean(advantages, mask),
        'returns/mean': agg.masked_mean(returns, mask),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              kl_ctl=kl_ctl)
    return new_state, metrics

  if state_shardings is None:
    return jax.jit(step, donate_argnums=(0,))
  return jax.jit(step, donate_argnums=(0,), out_shardings=(state_shardings, metrics_sharding))
