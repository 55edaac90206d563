"""The recovery penalty's sampling and reward (our formalization of Qi et al. 2024 / Young 2026).

A recovery rollout starts from a harmful prompt x and the first k tokens of a harmful
response ỹ, and the policy continues; its reward is -lambda_rec * h(x, ỹ_<=k ⊕ y_>k). The
depth k is drawn from a distribution over 0..K, then capped per row at the length of that
row's harmful response (a row with no harmful response gets k = 0). A minimum depth k_min
drops the depths below it and renormalizes: with k_min = 1 every recovery rollout starts inside
the harmful answer (k = 0 is a plain rollout on a harmful prompt, which the standard objective
already has; the recovery penalty's own signal is what happens after a harmful prefix).

Distributions (`prefill_depth_probs`):
* 'uniform':   p(k) = 1 / (K + 1),  k = 0..K.
* 'geometric': p(k) proportional to (1 - p)^k p, k = 0..K (a geometric on 0, 1, ... truncated
               at K and renormalized); small depths are most likely.
* 'fixed':     uniform over a given list of depths (a repeated depth counts twice).
* 'qi':        Qi et al.'s data augmentation: k = 0 w.p. 0.5, else uniform on 1..K (K = 100).
"""

from typing import Literal, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.errors import UserError

DepthDistribution = Literal['uniform', 'geometric', 'fixed', 'qi']
DEPTH_DISTRIBUTIONS: tuple[str, ...] = ('uniform', 'geometric', 'fixed', 'qi')


def prefill_depth_probs(
    distribution: DepthDistribution,
    max_depth: int = 100,
    p: float = 0.1,
    depths: Sequence[int] | None = None,
    min_depth: int = 0,
) -> np.ndarray:
  """Exact probabilities of each depth before capping.

  Args:
    distribution: 'uniform' | 'geometric' | 'fixed' | 'qi'.
    max_depth: K (>= 0; for 'qi' >= 1). Ignored by 'fixed' (its K is max(depths)).
    p: success probability of 'geometric', in (0, 1].
    depths: the list for 'fixed' (non-negative ints).
    min_depth: k_min >= 0: p(k) = 0 for k < k_min, the rest renormalized ('uniform' becomes
      U{k_min..K}).
  Returns:
    `[K + 1]` float64 numpy array summing to 1 (a static constant for jit).
  """
  probs = _depth_probs(distribution, max_depth, p, depths)
  if min_depth < 0 or probs[min_depth:].sum() <= 0:
    raise UserError(f'prefill min_depth={min_depth} leaves no depth of the {distribution!r} '
                    f'distribution (depths 0..{len(probs) - 1}); use 0 <= min_depth <= max_depth')
  probs = np.where(np.arange(len(probs)) >= min_depth, probs, 0.0)
  return probs / probs.sum()


def _depth_probs(distribution: DepthDistribution, max_depth: int, p: float,
                 depths: Sequence[int] | None) -> np.ndarray:
  if distribution == 'fixed':
    if not depths or min(depths) < 0:
      raise UserError(f"prefill depth distribution 'fixed' needs a non-empty list of depths "
                      f'>= 0, got {depths!r}; set recovery.depths')
    counts = np.bincount(np.asarray(depths, np.int64))
    return counts / counts.sum()
  if distribution not in DEPTH_DISTRIBUTIONS:
    raise UserError(f'unknown prefill depth distribution {distribution!r}; use one of '
                    f'{", ".join(DEPTH_DISTRIBUTIONS)}')
  if max_depth < 0 or (distribution == 'qi' and max_depth < 1):
    raise UserError(f'prefill max_depth must be >= 0 (>= 1 for qi), got {max_depth}')
  k = np.arange(max_depth + 1)
  if distribution == 'uniform':
    probs = np.ones(max_depth + 1)
  elif distribution == 'geometric':
    if not 0.0 < p <= 1.0:
      raise UserError(f"prefill depth distribution 'geometric' needs p in (0, 1], got {p}")
    probs = (1.0 - p) ** k * p
  else:  # qi
    probs = np.where(k == 0, 0.5, 0.5 / max_depth)
  return probs / probs.sum()


def sample_prefill_depth(
    key: jax.Array,
    harmful_len: jax.Array,
    distribution: DepthDistribution = 'qi',
    max_depth: int = 100,
    p: float = 0.1,
    depths: Sequence[int] | None = None,
    min_depth: int = 0,
) -> jax.Array:
  """Draws one prefill depth per row, k_b ~ p(k), then k_b = min(k_b, harmful_len_b).

  Jittable with `distribution`, `max_depth`, `p`, `depths`, `min_depth` static.

  Args:
    key: jax.random key.
    harmful_len: `[B]` int, number of tokens of each row's harmful response (0 = none).
    distribution, max_depth, p, depths, min_depth: see `prefill_depth_probs`.
  Returns:
    `[B]` int32 depths in 0..min(K, harmful_len_b).
  """
  probs = prefill_depth_probs(distribution, max_depth, p, depths, min_depth)
  with np.errstate(divide='ignore'):
    logits = jnp.asarray(np.log(probs), jnp.float32)
  k = jax.random.categorical(key, logits, shape=harmful_len.shape).astype(jnp.int32)
  return jnp.minimum(k, jnp.maximum(harmful_len.astype(jnp.int32), 0))


def recovery_reward(harm: jax.Array, coef: float | jax.Array) -> jax.Array:
  """Reward of a recovery rollout, -lambda_rec * h.

  Args:
    harm: `[B]` judge's harm h in [0, 1] of prompt ⊕ forced prefix ⊕ continuation.
    coef: lambda_rec >= 0.
  Returns:
    `[B]` float32.
  """
  return -jnp.asarray(coef, jnp.float32) * harm.astype(jnp.float32)
