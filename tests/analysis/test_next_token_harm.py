"""The full-vocabulary per-position gradient equals the exact one (tabular exact mode)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.analysis import exact_gradients, gradient_profile, martingale, next_token_harm
from deepalign.analysis import tabular_harm
from deepalign.errors import UserError


@functools.lru_cache(maxsize=None)
def _setup():
  policy, params, h = tabular_harm.random_policy(seed=3, vocab=3, horizon=4, scale=1.5)
  return policy, params, h, policy.judge_from_harm(h)


def _exact_next_harm(policy, params, h, tokens):
  """H(y<t ⊕ v) [N, T, V] from the exact node means (of h; pass h**2 for E[h^2 | ...])."""
  seqs = jnp.asarray(policy.sequences)
  probs = policy.sequence_probs(params)
  node_h = martingale.node_means(probs, policy.node_ids(seqs), h, policy.num_nodes)
  v = policy.vocab_size
  offsets = jnp.asarray(policy.offsets)
  codes = policy.node_ids(tokens)[:, :-1] - offsets[None, :-1]  # code of y<t, [N, T]
  child = offsets[None, 1:, None] + codes[..., None] * v + jnp.arange(v)[None, None, :]
  return node_h[child]


def test_full_vocabulary_gradient_with_exact_harm_equals_autodiff():
  policy, params, h, _ = _setup()
  seqs = jnp.asarray(policy.sequences)
  probs = policy.sequence_probs(params)
  mask = policy.response_mask(seqs)
  logp = policy.next_token_logprobs_fn(params, None, seqs, mask)
  weights = next_token_harm.full_vocab_weights(logp, _exact_next_harm(policy, params, h, seqs))
  # Every sequence once, weighted by N p(y): the batch mean is then the exact expectation.
  n = seqs.shape[0]
  prof = gradient_profile.per_position_grad_norms(
      policy.next_token_logprobs_fn, params, None, seqs, mask,
      weights * (n * probs)[:, None, None], num_groups=1)
  exact = exact_gradients.gradient_norms(
      exact_gradients.per_position_gradients_autodiff(policy, params, h))
  np.testing.assert_allclose(prof.norm, exact, rtol=1e-5, atol=1e-7)
  assert float(jnp.min(exact)) > 1e-3  # every position has a gradient to get right


def test_monte_carlo_full_vocabulary_gradient_matches_exact_within_se():
  policy, params, h, judge = _setup()
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  zeros = jnp.zeros((256, policy.horizon), jnp.int32)
  tokens, mask = policy.continue_fn(params, None, zeros, jnp.zeros(256, jnp.int32), k1)
  est = next_token_harm.estimate_next_token_harm(
      policy.continue_fn, judge, params, None, tokens, k2, vocab_size=policy.vocab_size,
      num_continuations=4, num_chunks=4)
  assert est.H.shape == (256, policy.horizon, policy.vocab_size)
  exact_h = _exact_next_harm(policy, params, h, tokens)
  # Against the exact SE (a sample SE from 4 draws is too noisy for a per-entry bound).
  exact_se = jnp.sqrt(jnp.maximum(_exact_next_harm(policy, params, h * h, tokens)
                                  - exact_h ** 2, 0.0) / 4)
  live = (mask[..., None] > 0) & (exact_se > 1e-3)  # not decided (up to float error)
  z = jnp.where(live, (est.H - exact_h) / jnp.where(live, exact_se, 1.0), 0.0)
  assert float(jnp.max(jnp.abs(z))) < 6.0
  np.testing.assert_allclose(jnp.sum(z ** 2) / jnp.sum(live), 1.0, atol=0.15)
  logp = policy.next_token_logprobs_fn(params, None, tokens, mask)
  prof = gradient_profile.per_position_grad_norms(
      policy.next_token_logprobs_fn, params, None, tokens, mask,
      next_token_harm.full_vocab_weights(logp, est.H), num_groups=8)
  exact = exact_gradients.gradient_norms(
      exact_gradients.per_position_gradients_autodiff(policy, params, h))
  bad = np.abs(np.asarray(prof.norm) - np.asarray(exact)) > 4 * np.asarray(prof.norm_se) + 1e-6
  assert not bad.any(), (prof.norm, prof.norm_se, exact)
  # Summing over the vocabulary instead of sampling y_t: a smaller SE than the sampled
  # covariance estimator E[s_t D_t] on the same responses with exact increments.
  seqs = jnp.asarray(policy.sequences)
  node_h = martingale.node_means(policy.sequence_probs(params), policy.node_ids(seqs), h,
                                 policy.num_nodes)
  d = jnp.diff(node_h[policy.node_ids(tokens)], axis=1)
  sampled = gradient_profile.per_position_grad_norms(policy.logprob_fn, params, None, tokens,
                                                     mask, d, num_groups=8)
  assert float(jnp.sum(prof.norm_se)) < float(jnp.sum(sampled.norm_se))


def test_weights_and_log_probs_must_have_the_same_shape():
  policy, params, _, _ = _setup()
  seqs = jnp.asarray(policy.sequences)[:8]
  mask = policy.response_mask(seqs)
  with pytest.raises(UserError, match='next-token log-probs'):
    gradient_profile.per_position_grad_norms(policy.logprob_fn, params, None, seqs, mask,
                                             jnp.zeros(seqs.shape + (policy.vocab_size,)),
                                             num_groups=1)
