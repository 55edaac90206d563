"""Per-position policy-gradient norms ||g_t|| by autodiff: the covariance estimator E[s_t D_t].

Definition: g_t = E[grad_theta log pi_theta(y_t | x, y_<t) * D_t], where D_t = H_t - H_{t-1} is
the harm-martingale increment (from `estimate_harm_martingale`, or any per-token weight, e.g.
an advantage). On a batch of N responses the estimate is

  g^_t = grad_theta (1/N) sum_i logp_{i,t}(theta) * stopgrad(w_{i,t})

and the profile is ||g^_t||_2 (global norm over the params pytree) for t = 1..T. The forward
pass runs once (jax.vjp); the T backward passes run under lax.map, so memory holds one
gradient per position at a time (plus `num_groups` of them for the standard errors).

Standard errors: the rows are split into G groups; the jackknife over groups gives the SE of
||g^_t||, and the cross-group products give an unbiased estimate of ||g_t||^2 (the plain norm
is biased upwards by the sampling noise, which matters where g_t is small).

logprob_fn(params, context, tokens [N, T], response_mask [N, T]) -> [N, T] log pi(y_t | x, y_<t),
teacher-forced (e.g. via rollout.token_logprobs on the model's logits).
Full-vocabulary form (deepalign/analysis/next_token_harm.py): a logprob_fn that returns
log pi(. | x, y_<t) [N, T, V] and weights [N, T, V]; then
g^_t = grad (1/N) sum_i sum_v logp_{i,t,v} * stopgrad(weights_{i,t,v}).
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from deepalign.errors import UserError

LogprobFn = Callable[[Any, Any, jax.Array, jax.Array], jax.Array]


class GradNormProfile(NamedTuple):
  """norm: [T] ||g^_t||; norm_se: [T] jackknife SE (nan if num_groups < 2);
  norm_sq_unbiased: [T] unbiased estimate of ||g_t||^2 (nan if num_groups < 2; may be < 0)."""
  norm: jax.Array
  norm_se: jax.Array
  norm_sq_unbiased: jax.Array


def _tree_dot(a, b) -> jax.Array:
  return sum(jnp.sum(x * y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@functools.partial(jax.jit, static_argnames=('logprob_fn', 'num_groups', 'positions_batch'))
def per_position_grad_norms(logprob_fn: LogprobFn, params, context, tokens: jax.Array,
                            response_mask: jax.Array, weights: jax.Array, *,
                            num_groups: int = 8, positions_batch: int | None = None
                            ) -> GradNormProfile:
  """||g^_t|| for t = 1..T with g^_t = grad (1/N) sum_i logp_{i,t} * stopgrad(weights_{i,t}).

  Args:
    logprob_fn: see the module docstring (static).
    params: the policy params pytree (the gradient is taken with respect to all of it).
    context: per-row pytree or None; tokens: int [N, T]; response_mask: [N, T] — positions
      with mask 0 (padding, or prefilled tokens that are context only) contribute nothing.
    weights: [N, T] D_t (or any per-token weight), or [N, T, V] per-token-and-vocabulary weights
      when logprob_fn returns [N, T, V] (the full-vocabulary form above).
    num_groups: G row groups for the SEs; N must be divisible by G.
    positions_batch: positions whose backward passes run together (None = one at a time).
  Returns:
    GradNormProfile.
  """
  n, t_len = tokens.shape
  if n % num_groups:
    raise UserError(f'per_position_grad_norms: {n} rows do not split into num_groups='
                    f'{num_groups} equal groups; pass a batch size divisible by it.')
  mask = response_mask if weights.ndim == 2 else response_mask[..., None]
  w = jax.lax.stop_gradient(weights * mask).astype(jnp.float32)
  logp, vjp_fn = jax.vjp(lambda p: logprob_fn(p, context, tokens, response_mask), params)
  if logp.shape != w.shape:
    raise UserError(f'per_position_grad_norms: logprob_fn gives {logp.shape} but weights are '
                    f'{w.shape}; pass [N, T] weights with token log-probs, [N, T, V] with '
                    'next-token log-probs.')
  group_of_row = jnp.arange(n) // (n // num_groups)
  # A group's gradient is the mean over its own rows: cotangent w / (N / G) on its rows.
  rows_of_group = jax.nn.one_hot(group_of_row, num_groups).T  # [G, N]
  group_weights = (rows_of_group.reshape((num_groups, n) + (1,) * (w.ndim - 1))
                   * w[None] * (num_groups / n))  # [G, N, T(, V)]

  def position(t):
    onehot_t = ((jnp.arange(t_len) == t).astype(logp.dtype)
                .reshape((1, t_len) + (1,) * (w.ndim - 2)))
    grads = jax.vmap(lambda gw: vjp_fn((gw * onehot_t).astype(logp.dtype))[0])(
        group_weights)  # leaves [G, ...]
    mean = jax.tree.map(lambda x: jnp.mean(x, axis=0), grads)
    norm = optax.tree.norm(mean)
    if num_groups < 2:
      return norm, jnp.nan, jnp.nan
    g = num_groups
    leave_one_out = jax.tree.map(lambda x, m: (g * m[None] - x) / (g - 1), grads, mean)
    loo_norms = jax.vmap(optax.tree.norm)(leave_one_out)
    se = jnp.sqrt((g - 1) / g * jnp.sum((loo_norms - jnp.mean(loo_norms)) ** 2))
    total = jax.tree.map(lambda x: jnp.sum(x, axis=0), grads)
    sum_sq = jnp.sum(jax.vmap(lambda x: _tree_dot(x, x))(grads))
    unbiased = (_tree_dot(total, total) - sum_sq) / (g * (g - 1))
    return norm, se, unbiased

  norm, se, unbiased = jax.lax.map(position, jnp.arange(t_len), batch_size=positions_batch)
  return GradNormProfile(norm=norm, norm_se=se, norm_sq_unbiased=unbiased)


@functools.partial(jax.jit, static_argnames=('logprob_fn',))
def score_sq_norms(logprob_fn: LogprobFn, params, context, tokens: jax.Array,
                   response_mask: jax.Array) -> jax.Array:
  """||s_{i,t}||^2 = ||grad_theta log pi(y_{i,t} | x_i, y_{i,<t})||^2 per token [N, T].

  One Jacobian per row (lax.map over rows, T backward passes each): meant for small models
  and small batches, to check the bound ||g_t|| <= (E||s_t||^2)^(1/2) I_t^(1/2).
  """
  def row(args):
    ctx, tok, mask = args
    one = lambda x: x[None]
    jac = jax.jacrev(lambda p: logprob_fn(p, jax.tree.map(one, ctx), tok[None], mask[None])[0])(
        params)  # leaves [T, ...]
    return sum(jnp.sum(leaf.reshape(tok.shape[0], -1).astype(jnp.float32) ** 2, axis=1)
               for leaf in jax.tree.leaves(jac))

  return jax.lax.map(row, (context, tokens, response_mask)) * response_mask


def gradient_bound(score_sq: jax.Array, harm_information: jax.Array,
                   response_mask: jax.Array) -> jax.Array:
  """(E||s_t||^2)^(1/2) * I_t^(1/2) [T], the Cauchy-Schwarz bound on ||g_t|| (DESIGN "Theory").

  Args:
    score_sq: [N, T] from `score_sq_norms`; harm_information: [T] I_t (negative estimates count
      as 0); response_mask: [N, T] (positions past the end have s_t = 0).
  """
  mean_sq = jnp.mean(score_sq * response_mask, axis=0)
  return jnp.sqrt(mean_sq * jnp.maximum(harm_information, 0.0))
