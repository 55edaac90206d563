"""Per-position KL between two models on given responses (teacher-forced).

KL_t = E_i[ KL(p(. | x_i, y_i,<t) || q(. | x_i, y_i,<t)) ], t = 1..T (position 1 = the first
response token), averaged over ALL rows: a position past a row's end contributes 0, as the
absorbing EOS state does, so sum_t KL_t is the KL of the response laws when the responses are
drawn from p. The full-vocabulary KL at each visited prefix is used when logits are available
(no sampling noise inside a position); `kl_per_position_sampled` is the fallback from
token log-probs only (the unbiased k1 estimator log p(y_t) - log q(y_t), y_t ~ p).
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from deepalign.analysis.harm_martingale_mc import mean_and_se

LogitsFn = Callable[[Any, Any, jax.Array, jax.Array], jax.Array]


class KLProfile(NamedTuple):
  """mean: [T] KL_t in nats; se: [T] standard error over rows; count: [T] rows alive at t."""
  mean: jax.Array
  se: jax.Array
  count: jax.Array


def _profile(per_token: jax.Array, response_mask: jax.Array) -> KLProfile:
  per_token = jnp.where(response_mask > 0, per_token, 0.0)
  mean, se = mean_and_se(per_token, axis=0)
  return KLProfile(mean=mean, se=se, count=jnp.sum(response_mask > 0, axis=0))


@jax.jit
def kl_per_position(logits_p: jax.Array, logits_q: jax.Array, response_mask: jax.Array,
                    temperature: float = 1.0) -> KLProfile:
  """Exact per-prefix KL(p || q) from logits.

  Args:
    logits_p, logits_q: [B, T, V]; row t predicts response token t (0-based).
    response_mask: [B, T] 1 where the response token exists.
    temperature: both distributions are softmax(logits / temperature).
  """
  return _profile(kl_per_token(logits_p, logits_q, temperature), response_mask)


def kl_per_token(logits_p: jax.Array, logits_q: jax.Array, temperature: float = 1.0) -> jax.Array:
  """[B, T] full-vocabulary KL(p || q) at every prefix from logits [B, T, V] (unmasked)."""
  logp = jax.nn.log_softmax(logits_p.astype(jnp.float32) / temperature, axis=-1)
  logq = jax.nn.log_softmax(logits_q.astype(jnp.float32) / temperature, axis=-1)
  return jnp.sum(jnp.exp(logp) * (logp - logq), axis=-1)


@jax.jit
def kl_per_position_sampled(logp_p: jax.Array, logp_q: jax.Array,
                            response_mask: jax.Array) -> KLProfile:
  """k1 estimate from token log-probs [B, T] of responses sampled from p."""
  return _profile(logp_p - logp_q, response_mask)


@functools.partial(jax.jit, static_argnames=('logits_fn', 'other_logits_fn'))
def kl_profile_of_models(logits_fn: LogitsFn, params, other_params, context, tokens: jax.Array,
               response_mask: jax.Array, other_logits_fn: LogitsFn | None = None) -> KLProfile:
  """KL_t between the model `params` (p) and `other_params` (q, e.g. the reference).

  logits_fn(params, context, tokens [B, T], response_mask) -> [B, T, V] teacher-forced logits
  of the response positions; other_logits_fn defaults to logits_fn (same architecture).
  """
  other_logits_fn = other_logits_fn or logits_fn
  return kl_per_position(logits_fn(params, context, tokens, response_mask),
                         other_logits_fn(other_params, context, tokens, response_mask),
                         response_mask)
