"""The full-vocabulary (Rao-Blackwellized) per-position gradient: no sampling of y_t.

The covariance estimator g^_t = mean_i s_{i,t} D_{i,t} samples the token y_t. At a nearly
deterministic policy that is heavy-tailed: g_t is carried by tokens of probability ~1e-4 whose
scores are large, so a batch of 128 responses sees zero or one or two of them and the profile
is a handful of spikes. Summing over y_t instead of sampling it,

  g_t = E_{y<t}[ sum_v grad pi(v | x, y<t) H(x, y<t ⊕ v) ]
      = E_{y<t}[ sum_v pi(v) (H(y<t ⊕ v) - Hbar(y<t)) grad log pi(v | x, y<t) ],
  Hbar(y<t) = sum_v pi(v) H(y<t ⊕ v),

needs H(y<t ⊕ v) for every token v: `num_continuations` continuations from each of the
N x T x V one-token extensions, judged (an unbiased estimate of H; g^_t is linear in it, so
even one continuation keeps g^_t unbiased, and its noise is weighted by pi(v)). The centring by
Hbar changes nothing in expectation (sum_v pi(v) grad log pi(v) = 0) and removes the common
part of the noise.

`full_vocab_weights` turns H(y<t ⊕ v) into the [N, T, V] weights that
`gradient_profile.per_position_grad_norms` takes with a log-softmax `logprob_fn`
(`ModelNextTokenLogprobsFn`, `TabularPolicy.next_token_logprobs_fn`).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from deepalign.analysis.harm_martingale_mc import (ContinueFn, JudgeFn, judged_continuations,
                                                   repeat_rows)
from deepalign.errors import UserError


class NextTokenHarm(NamedTuple):
  """H: [N, T, V] estimate of H(x, y<t ⊕ v) (column t = response position t+1);
  H_se: [N, T, V] its standard error (nan with one continuation)."""
  H: jax.Array
  H_se: jax.Array


@functools.partial(jax.jit, static_argnames=('continue_fn', 'judge_fn', 'vocab_size',
                                             'num_continuations', 'num_chunks'))
def estimate_next_token_harm(continue_fn: ContinueFn, judge_fn: JudgeFn, params, context,
                             tokens: jax.Array, rng: jax.Array, *, vocab_size: int,
                             num_continuations: int = 1, num_chunks: int = 1) -> NextTokenHarm:
  """H(x, y<t ⊕ v) for every row, position and token, by judged continuations.

  Args:
    continue_fn, judge_fn: the interfaces of `harm_martingale_mc` (static, hashable).
    params: the policy's params, passed to continue_fn.
    context: per-row pytree (leading axis N) or None.
    tokens: int [N, T] responses (their y<t are the prefixes; y_t itself is replaced by v).
    vocab_size: V, every token id 0..V-1 is tried at every position.
    num_continuations: M >= 1 per (row, position, token).
    num_chunks: run the N * T * V * M continuations in this many sequential pieces (memory).
  Returns:
    NextTokenHarm.
  """
  if num_continuations < 1:
    raise UserError(f'num_continuations={num_continuations}: use at least 1.')
  n, t_len = tokens.shape
  v, m = vocab_size, num_continuations
  reps = t_len * v * m
  # Row order (i, t, v, j): prefix y_i<t, then token v at column t, then free continuation.
  forced = jnp.broadcast_to(tokens[:, None, None, None, :], (n, t_len, v, m, t_len))
  column = jnp.arange(t_len)[None, :, None, None, None] == jnp.arange(t_len)
  token_v = jnp.arange(v, dtype=tokens.dtype)[None, None, :, None, None]
  forced = jnp.where(column, token_v, forced).reshape(n * reps, t_len)
  forced_len = jnp.broadcast_to((jnp.arange(t_len) + 1)[None, :, None, None],
                                (n, t_len, v, m)).reshape(-1)
  h = judged_continuations(continue_fn, judge_fn, params, repeat_rows(context, reps), forced,
                           forced_len, rng, num_chunks).reshape(n, t_len, v, m)
  mean = jnp.mean(h, axis=-1)
  if m < 2:
    return NextTokenHarm(H=mean, H_se=jnp.full_like(mean, jnp.nan))
  return NextTokenHarm(H=mean, H_se=jnp.std(h, axis=-1, ddof=1) / jnp.sqrt(m))


def full_vocab_weights(next_logprobs: jax.Array, next_harm: jax.Array) -> jax.Array:
  """pi(v) (H(y<t ⊕ v) - Hbar(y<t)) [N, T, V]: the weights of grad log pi(v | y<t).

  Args:
    next_logprobs: [N, T, V] log pi(v | x, y<t) (at the sampling temperature).
    next_harm: [N, T, V] H(x, y<t ⊕ v), e.g. `estimate_next_token_harm(...).H`.
  """
  probs = jnp.exp(next_logprobs)
  hbar = jnp.sum(probs * next_harm, axis=-1, keepdims=True)
  return jax.lax.stop_gradient(probs * (next_harm - hbar))
