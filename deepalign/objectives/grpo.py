"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) as in TRL's GRPOTrainer.

Advantages: the G completions of one prompt are laid out contiguously (rows g*G .. g*G+G-1),
    A_i = (r_i - mean_group(r)) / (std_group(r) + eps)
with the sample std (ddof = 1, torch's default that TRL uses) and eps = 1e-4 as TRL; Dr. GRPO
(Liu et al. 2025) drops the std: A_i = r_i - mean_group(r).

Loss (per token, rho = pi_theta / pi_old, kl_t = k3 of KL(pi_theta || pi_ref)):
    l_t = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * kl_t
aggregated by `aggregation`: 'sequence_mean' = the original GRPO (mean over sequences of
per-sequence token means), 'token_mean' = DAPO (Yu et al. 2025) / TRL 'bnpo',
'token_sum_normalized' with the global token count = TRL 'dapo', with B * L_max = Dr. GRPO.
"""

import jax
import jax.numpy as jnp

from deepalign.errors import UserError
from deepalign.objectives import aggregation as agg
from deepalign.objectives import kl as kl_lib


def group_advantages(
    rewards: jax.Array,
    group_size: int,
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> jax.Array:
  """Group-relative advantages (module doc).

  Args:
    rewards: `[B]` with B = num_prompts * group_size, groups contiguous.
    group_size: G (>= 2: one sample has no baseline).
    scale_by_std: divide by the group std (GRPO); False = Dr. GRPO.
    eps: added to the std.
  Returns:
    `[B]` float32.
  """
  if group_size < 2:
    raise UserError(f'GRPO group_size must be >= 2 (completions per prompt), got {group_size}')
  if rewards.shape[0] % group_size:
    raise UserError(f'GRPO batch of {rewards.shape[0]} completions is not a multiple of '
                    f'group_size={group_size}; make the batch num_prompts * group_size')
  grouped = rewards.astype(jnp.float32).reshape(-1, group_size)
  adv = grouped - jnp.mean(grouped, axis=1, keepdims=True)
  if scale_by_std:
    adv = adv / (jnp.std(grouped, axis=1, ddof=1, keepdims=True) + eps)
  return adv.reshape(-1)


def grpo_loss(
    logprobs: jax.Array,
    advantages: jax.Array,
    mask: jax.Array,
    old_logprobs: jax.Array | None = None,
    ref_logprobs: jax.Array | None = None,
    beta: float = 0.04,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    mode: agg.Aggregation = 'sequence_mean',
    normalizer: jax.Array | float | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """GRPO clipped loss with the k3 KL to the reference inside the loss.

  Args:
    logprobs: `[B, T]` log pi_theta of the completion tokens (differentiated).
    advantages: `[B]` from `group_advantages` (one per completion).
    mask: `[B, T]` 1 on the policy's generated tokens.
    old_logprobs: `[B, T]` sampler's log-probs; None = a single update per batch, where
      pi_old = pi_theta and rho = 1 (its gradient is still A * grad log pi).
    ref_logprobs: `[B, T]` log pi_ref; required when beta != 0.
    beta: KL coefficient (TRL default 0.04; 0 drops the term).
    clip_eps, clip_eps_high: eps_low, eps_high (default eps_high = eps_low).
    mode, normalizer: `aggregation.aggregate`.
  Returns:
    (scalar loss, metrics): 'kl' (token mean of k3), 'clip_ratio' (fraction of valid tokens
    whose ratio is clipped in the direction that stops the gradient), 'ratio' (mean rho).
  """
  if beta and ref_logprobs is None:
    raise UserError('GRPO with beta != 0 needs ref_logprobs; pass them or set beta=0')
  eps_high = clip_eps if clip_eps_high is None else clip_eps_high
  logprobs = logprobs.astype(jnp.float32)
  if old_logprobs is None:
    old_logprobs = logprobs
  old_logprobs = jax.lax.stop_gradient(old_logprobs.astype(jnp.float32))
  adv = jax.lax.stop_gradient(advantages.astype(jnp.float32))[:, None]
  valid = mask > 0
  ratio = jnp.exp(jnp.where(valid, logprobs - old_logprobs, 0.0))
  clipped_ratio = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high)
  per_token = -jnp.minimum(ratio * adv, clipped_ratio * adv)
  metrics = {}
  if beta:
    # Masked inputs: garbage (even -inf) on padding must not turn the gradient into nan. A token
    # the current top-k / top-p policy dropped (probability 0, importance weight 0) is left out
    # of the KL term: its k3 would be inf.
    kept = valid & (logprobs > kl_lib.DROPPED_LOGPROB)
    kl = jnp.where(kept, kl_lib.kl_estimate(jnp.where(kept, logprobs, 0.0),
                                            jnp.where(kept, ref_logprobs, 0.0), 'k3'), 0.0)
    per_token = per_token + beta * kl
    metrics['kl'] = agg.masked_mean(jax.lax.stop_gradient(kl), mask)
  elif ref_logprobs is not None:
    metrics['kl'] = agg.masked_mean(
        kl_lib.kl_estimate(jax.lax.stop_gradient(logprobs), ref_logprobs, 'k3'), mask)
  ratio_sg = jax.lax.stop_gradient(ratio)
  is_clipped = (((ratio_sg < 1.0 - clip_eps) & (adv < 0))
                | ((ratio_sg > 1.0 + eps_high) & (adv > 0)))
  metrics['clip_ratio'] = agg.masked_mean(is_clipped.astype(jnp.float32), mask)
  metrics['ratio'] = agg.masked_mean(ratio_sg, mask)
  return agg.aggregate(per_token, mask, mode, normalizer), metrics
