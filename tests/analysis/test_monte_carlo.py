"""The Monte-Carlo estimators agree with the exact tabular values within their standard errors.

Fixed seeds; "within 4 SE" per reported quantity, as the issue's acceptance asks.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.analysis import (equilibrium, exact_gradients, gradient_profile,
                                harm_martingale_mc, kl_profile, martingale, prefill_attack,
                                tabular_harm)
from deepalign.analysis.tabular import TabularPolicy
from deepalign.errors import UserError


@functools.lru_cache(maxsize=None)
def _random_setup():
  """A random policy (logit scale 0.5: no near-certain branches, so sample SEs are honest)."""
  policy, params, h = tabular_harm.random_policy(seed=0, vocab=3, horizon=4, scale=0.5)
  seqs = jnp.asarray(policy.sequences)
  nodes = policy.node_ids(seqs)
  probs = policy.sequence_probs(params)
  return policy, params, h, policy.judge_from_harm(h), probs, nodes


@functools.lru_cache(maxsize=None)
def _random_estimate():
  """One Monte-Carlo run shared by the tests: 512 responses x 5 prefixes x 32 continuations."""
  policy, params, _, judge, _, _ = _random_setup()
  k1, k2 = jax.random.split(jax.random.PRNGKey(1))
  tokens, mask = _sample(policy, params, 512, k1)
  est = harm_martingale_mc.estimate_harm_martingale(
      policy.continue_fn, judge, params, None, tokens, mask, k2, num_continuations=32)
  return tokens, mask, est


def _sample(policy, params, n, rng):
  zeros = jnp.zeros((n, policy.horizon), jnp.int32)
  return policy.continue_fn(params, None, zeros, jnp.zeros(n, jnp.int32), rng)


def _assert_within(estimate, se, exact, k=4.0, atol=1e-6):
  estimate, se, exact = map(np.asarray, (estimate, se, exact))
  bad = np.abs(estimate - exact) > k * se + atol
  assert not bad.any(), (estimate[bad], se[bad], exact[bad])


def test_harm_martingale_matches_exact():
  policy, params, h, judge, probs, nodes = _random_setup()
  tokens, _, est = _random_estimate()
  prefixes = policy.node_ids(tokens)
  exact_h = martingale.node_means(probs, nodes, h, policy.num_nodes)[prefixes]
  exact_var = (martingale.node_means(probs, nodes, h * h, policy.num_nodes)[prefixes]
               - exact_h ** 2)
  assert est.H.shape == (512, policy.horizon + 1)
  # Each of the 2560 estimates against its exact value, in units of its exact SE (a sample SE
  # from 32 draws of a skewed h is itself too noisy for a per-entry bound); 5 SE, not 4, as
  # the maximum of 2560 skewed z-scores; the z-scores have unit variance overall.
  exact_se = jnp.sqrt(jnp.maximum(exact_var, 0.0) / 32)
  _assert_within(est.H, exact_se, exact_h, k=5.0)
  undecided = exact_se > 0
  z2 = jnp.where(undecided, (est.H - exact_h) ** 2 / jnp.where(undecided, exact_se, 1.0) ** 2, 0)
  np.testing.assert_allclose(jnp.sum(z2) / jnp.sum(undecided), 1.0, atol=0.2)
  # Averaged over the 512 responses, H_0 = E[h] within 4 SE.
  _assert_within(jnp.mean(est.H[:, 0]), jnp.std(est.H[:, 0]) / jnp.sqrt(512), exact_h[0, 0])
  assert float(jnp.mean(exact_se)) > 1e-2  # the check above had noise to absorb
  # The reported SEs are calibrated: their squares average to the exact variance of the mean.
  np.testing.assert_allclose(jnp.mean(est.H_se ** 2), jnp.mean(exact_se ** 2), rtol=0.1)
  # Where the harm is decided the estimate is exact and says so.
  decided = exact_var < 1e-12
  assert bool(jnp.any(decided)) and float(jnp.max(jnp.where(decided, est.H_se, 0.0))) == 0.0
  np.testing.assert_allclose(est.H[:, -1], h[_sequence_index(policy, tokens)], atol=1e-6)


def _sequence_index(policy, tokens):
  seqs = jnp.asarray(policy.sequences)
  lookup = jnp.zeros(policy.num_nodes, jnp.int32).at[policy.node_ids(seqs)[:, -1]].set(
      jnp.arange(seqs.shape[0]))
  return lookup[policy.node_ids(tokens)[:, -1]]


def test_harm_information_matches_exact():
  policy, params, h, judge, probs, nodes = _random_setup()
  _, _, est = _random_estimate()
  exact = martingale.exact_martingale(probs, nodes, h, policy.num_nodes)
  info = martingale.harm_information(probs, exact.D)
  _assert_within(est.harm_information, est.harm_information_se, info)
  # sum_t I_t = Var(h) holds for the estimates too (both are unbiased for the same number).
  var = martingale.harm_variance(probs, h)
  assert abs(float(jnp.sum(est.harm_information)) - float(var)) < 4 * float(
      jnp.sqrt(jnp.sum(est.harm_information_se ** 2))) + 1e-3


def test_harm_horizon_distribution_matches_exact():
  policy = TabularPolicy(vocab_size=3, horizon=4, eos_id=0)
  params = policy.init_params(jax.random.PRNGKey(7), scale=0.5)
  seqs = jnp.asarray(policy.sequences)
  # h = 1 iff the response opens with (1, 2): decided at position 1 or 2.
  h = ((seqs[:, 0] == 1) & (seqs[:, 1] == 2)).astype(jnp.float32)
  judge = policy.judge_from_harm(h)
  probs = policy.sequence_probs(params)
  exact = martingale.exact_martingale(probs, policy.node_ids(seqs), h, policy.num_nodes)
  exact_tau = martingale.harm_horizon(exact.cond_var, 0.0)
  exact_dist = martingale.horizon_distribution(probs, exact_tau, policy.horizon)
  k1, k2 = jax.random.split(jax.random.PRNGKey(8))
  b = 256
  tokens, mask = _sample(policy, params, b, k1)
  est = harm_martingale_mc.estimate_harm_martingale(
      policy.continue_fn, judge, params, None, tokens, mask, k2, num_continuations=128,
      num_chunks=4)
  # Undecided prefixes have Var(h) >= 0.05 here, so 128 continuations never all agree by
  # chance: the estimated horizon is the exact one, response by response.
  lookup = jnp.zeros(policy.num_nodes, jnp.int32).at[policy.node_ids(seqs)[:, -1]].set(exact_tau)
  np.testing.assert_array_equal(est.horizon, lookup[policy.node_ids(tokens)[:, -1]])
  dist_se = jnp.sqrt(exact_dist * (1 - exact_dist) / b)
  _assert_within(est.horizon_hist, dist_se, exact_dist)
  mean_exact = jnp.sum(exact_dist * jnp.arange(policy.horizon + 1))
  _assert_within(est.horizon_mean, est.horizon_mean_se, mean_exact)
  assert set(np.unique(np.asarray(est.horizon))) == {1, 2}


def test_per_position_gradient_norms_match_exact():
  policy, params, h, judge, _, _ = _random_setup()
  exact = exact_gradients.gradient_norms(
      exact_gradients.per_position_gradients_autodiff(policy, params, h))
  tokens, mask, est = _random_estimate()
  prof = gradient_profile.per_position_grad_norms(
      policy.logprob_fn, params, None, tokens, mask, est.D, num_groups=8)
  assert prof.norm.shape == (policy.horizon,)
  _assert_within(prof.norm, prof.norm_se, exact)
  assert float(jnp.min(prof.norm_se)) > 0
  # Cauchy-Schwarz: ||g_t|| <= (E||s_t||^2)^(1/2) I_t^(1/2), with per-token score norms by
  # autodiff on 256 of the rows; their mean matches the exact E||s_t||^2.
  sq = gradient_profile.score_sq_norms(policy.logprob_fn, params, None, tokens[:256], mask[:256])
  mean_sq, se_sq = harm_martingale_mc.mean_and_se(sq)
  _assert_within(mean_sq, se_sq, exact_gradients.expected_score_sq_norm(policy, params))
  bound = gradient_profile.gradient_bound(sq, est.harm_information, mask[:256])
  assert bool(jnp.all(exact <= bound * 1.25)), (exact, bound)
  # Zero weights give exactly zero gradient: the estimator has no offset of its own.
  zero = gradient_profile.per_position_grad_norms(
      policy.logprob_fn, params, None, tokens, mask, jnp.zeros_like(est.D), num_groups=8)
  assert float(jnp.max(zero.norm)) == 0.0
  with pytest.raises(UserError, match='num_groups'):
    gradient_profile.per_position_grad_norms(policy.logprob_fn, params, None, tokens[:10],
                                             mask[:10], est.D[:10], num_groups=8)


def test_kl_profile_matches_exact_equilibrium_kl():
  policy, ref, h, _, _, _ = _random_setup()
  star = equilibrium.optimal_params(policy, ref, h, 0.5)
  exact = equilibrium.per_position_kl(policy, star, ref)
  tokens, mask = _sample(policy, star, 1024, jax.random.PRNGKey(3))
  prof = kl_profile.kl_profile_of_models(policy.logits_fn, star, ref, None, tokens, mask)
  _assert_within(prof.mean, prof.se, exact)
  assert float(jnp.min(exact)) > 1e-3
  sampled = kl_profile.kl_per_position_sampled(
      policy.token_logprobs(star, tokens), policy.token_logprobs(ref, tokens), mask)
  _assert_within(sampled.mean, sampled.se, exact)
  # The exact-per-prefix form has less noise than the k1 form on the same responses.
  assert bool(jnp.all(prof.se <= sampled.se))


def test_prefill_asr_and_over_refusal_match_exact():
  policy = TabularPolicy(vocab_size=4, horizon=5, eos_id=tabular_harm.EOS)
  params = tabular_harm.shallow_params(policy, refuse_logit=1.0)
  judge = tabular_harm.Judge(payload=3)
  h = judge(None, jnp.asarray(policy.sequences), None)
  harmful = jnp.asarray([tabular_harm.SURE] + [tabular_harm.PAY] * 4, jnp.int32)
  b = 512
  asr = prefill_attack.prefill_asr(
      policy.continue_fn, judge, params, None, jnp.tile(harmful, (b, 1)),
      jnp.full(b, 5), jax.random.PRNGKey(4))
  assert list(asr) == [0, 1, 2, 3, 5]  # the default depths capped by the response length
  for k, (mean, se) in asr.items():
    exact = float(exact_gradients.expected_harm(policy, params, h, harmful, min(k, 5)))
    _assert_within(mean, se, exact, atol=1e-3)
  assert asr[0][0] < 0.01 and asr[1][0] > 0.1 and asr[5][0] == 1.0  # shallow alignment
  # Several judges score one generation: same key, same responses, so the harm judge's rates
  # are asr's exactly, and the refusal judge's are the exact first-token refusal rates.
  refused_first = lambda ctx, tokens, mask: (tokens[:, 0] == tabular_harm.REFUSE).astype(
      jnp.float32)
  both = prefill_attack.prefill_rates(policy.continue_fn, (judge, refused_first), params, None,
                                      jnp.tile(harmful, (b, 1)), jnp.full(b, 5),
                                      jax.random.PRNGKey(4))
  assert both[0] == asr
  p_refuse = float(jax.nn.softmax(params['logits'][0])[tabular_harm.REFUSE])
  _assert_within(both[1][0][0], both[1][0][1], p_refuse)
  assert all(both[1][k][0] == 0.0 for k in (1, 2, 3, 5))  # the forced first token is SURE
  # A row with a shorter harmful response is forced whole: its payload is complete.
  short = prefill_attack.prefill_asr(
      policy.continue_fn, judge, params, None, harmful[None, :], jnp.asarray([4]),
      jax.random.PRNGKey(5), depths=(0, 4, 5), num_samples=8)
  assert short[5] == (1.0, pytest.approx(short[5][1], nan_ok=True))

  refuses = lambda ctx, tokens, mask: (tokens[:, 0] == tabular_harm.REFUSE).astype(jnp.float32)
  helps = lambda ctx, tokens, mask: (tokens[:, 0] == tabular_harm.SURE).astype(jnp.float32)
  out = prefill_attack.benign_eval(policy.continue_fn, refuses, params, jnp.zeros((b, 1)),
                                   jax.random.PRNGKey(6), response_len=5, helpful_fn=helps)
  first = jax.nn.softmax(params['logits'][0])
  _assert_within(out['over_refusal'][0], out['over_refusal'][1], first[tabular_harm.REFUSE])
  assert out['benign_helpfulness'][0] < 0.01
  with pytest.raises(UserError, match='depths'):
    prefill_attack.prefill_asr(policy.continue_fn, judge, params, None, harmful[None, :2],
                               jnp.asarray([2]), jax.random.PRNGKey(0), depths=(5, 10))


def test_martingale_estimator_rejects_a_single_continuation():
  policy, params, _, judge, _, _ = _random_setup()
  tokens, mask = _sample(policy, params, 4, jax.random.PRNGKey(0))
  with pytest.raises(UserError, match='num_continuations'):
    harm_martingale_mc.estimate_harm_martingale(
        policy.continue_fn, judge, params, None, tokens, mask, jax.random.PRNGKey(1),
        num_continuations=1)
