"""Masked whitening of advantages (TRL `masked_whiten`)."""

import jax
import jax.numpy as jnp

from deepalign.objectives import aggregation as agg


def masked_var(values: jax.Array, mask: jax.Array, unbiased: bool = True) -> jax.Array:
  """Variance of `values` over `mask` (any equal shapes) -> scalar.

  unbiased: Bessel's correction n / (n - 1), as TRL's `masked_var` (n = valid count; with
  n <= 1 the correction is skipped).
  """
  mean = agg.masked_mean(values, mask)
  var = agg.masked_mean((values - mean) ** 2, mask)
  if unbiased:
    n = jnp.sum((mask > 0).astype(jnp.float32))
    var = jnp.where(n > 1, var * n / jnp.maximum(n - 1.0, 1.0), var)
  return var


def masked_whiten(
    values: jax.Array,
    mask: jax.Array,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> jax.Array:
  """(x - mean) / sqrt(var + eps) with mean, var over the valid entries only.

  With shift_mean=False the mean is added back (only the scale changes), as TRL does for
  the rewards. The mean and variance are over the whole (global) batch: under jit with a
  sharded batch, the sums are already global.

  Args:
    values: `[B, T]` (or any shape), e.g. GAE advantages.
    mask: same shape, 1 = valid.
    shift_mean: centre at zero.
    unbiased: Bessel-corrected variance (TRL default).
    eps: added to the variance.
  Returns:
    same shape, float32, 0 off the mask.
  """
  values = values.astype(jnp.float32)
  mean = agg.masked_mean(values, mask)
  var = masked_var(values, mask, unbiased)
  whitened = (values - mean) * jax.lax.rsqrt(var + eps)
  if not shift_mean:
    whitened = whitened + mean
  return jnp.where(mask > 0, whitened, 0.0)


def whiten_rows(values: jax.Array, mask: jax.Array, rows: jax.Array, shift_mean: bool = True,
                unbiased: bool = True, eps: float = 1e-8) -> jax.Array:
  """`masked_whiten` of the rows selected by `rows` [B] (bool) with THEIR statistics only;
  the other rows are returned unchanged (0 off the mask).

  The PPO step whitens the reward-model rows' advantages (and rewards) this way and leaves
  the recovery rows' (reward -lambda_rec * h, h in [0, 1]) in their own units: whitened
  together, the recovery rows were divided by a std dominated by the reward model's scale, so
  lambda_rec's effect depended on that scale (issue 17 item 5).
  """
  values = values.astype(jnp.float32)
  selected = (mask > 0) & rows[:, None]
  whitened = masked_whiten(values, selected, shift_mean, unbiased, eps)
  return jnp.where(selected, whitened, jnp.where(mask > 0, values, 0.0))
