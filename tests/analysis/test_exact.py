"""Exact mode on tabular policies: the identities of DESIGN.md "Theory", checked by enumeration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.analysis import equilibrium, exact_gradients, martingale, tabular_harm
from deepalign.analysis.tabular import TabularPolicy
from deepalign.errors import UserError


def _martingale(policy, params, h):
  seqs = jnp.asarray(policy.sequences)
  probs = policy.sequence_probs(params)
  return probs, martingale.exact_martingale(probs, policy.node_ids(seqs), h, policy.num_nodes)


def test_enumeration_is_a_distribution_with_absorbing_eos():
  policy, params, _ = tabular_harm.random_policy(seed=1, vocab=3, horizon=4)
  seqs = policy.sequences
  # (V-1)^T strings without EOS + (V-1)^L strings ending at an EOS at position L+1.
  assert len(seqs) == 2 ** 4 + sum(2 ** l for l in range(4))
  assert len({tuple(s) for s in seqs}) == len(seqs)
  np.testing.assert_allclose(jnp.sum(policy.sequence_probs(params)), 1.0, rtol=1e-5)
  first_eos = np.argmax(np.concatenate([seqs == 0, np.ones((len(seqs), 1), bool)], 1), 1)
  for row, e in zip(seqs, first_eos):
    assert np.all(row[e:] == 0)


def test_martingale_identities_on_a_random_policy():
  policy, params, h = tabular_harm.random_policy(seed=0)
  probs, mart = _martingale(policy, params, h)
  np.testing.assert_allclose(mart.H[:, -1], h, atol=1e-6)  # H_T = h
  np.testing.assert_allclose(mart.H[:, 0], jnp.sum(probs * h), rtol=1e-5)  # H_0 = E[h]
  # E[D_t | y_<t] = 0: the increments are uncorrelated with every function of the past.
  for t in range(policy.horizon):
    past = jnp.sin(3.0 * mart.H[:, t] + t)
    assert abs(float(jnp.sum(probs * mart.D[:, t] * past))) < 1e-6
  info = martingale.harm_information(probs, mart.D)
  assert float(jnp.min(info)) > 0
  np.testing.assert_allclose(jnp.sum(info), martingale.harm_variance(probs, h), rtol=1e-5)


def test_autodiff_per_position_gradients_equal_covariance_form():
  policy, params, h = tabular_harm.random_policy(seed=2)
  g_auto = exact_gradients.per_position_gradients_autodiff(policy, params, h)
  g_cov = exact_gradients.per_position_gradients_covariance(policy, params, h)
  diff = float(jnp.max(jnp.abs(g_auto['logits'] - g_cov['logits'])))
  assert diff <= 1e-5, diff
  norms = exact_gradients.gradient_norms(g_auto)
  assert float(jnp.min(norms)) > 1e-3  # a real comparison, not 0 == 0
  # Summed over positions it is the whole gradient of E[h].
  full = jax.grad(lambda p: exact_gradients.expected_harm(policy, p, h))(params)
  np.testing.assert_allclose(jnp.sum(g_auto['logits'], 0), full['logits'], atol=1e-6)


def test_gradient_bound_by_harm_information():
  policy, params, h = tabular_harm.random_policy(seed=3, vocab=3, horizon=3)
  probs, mart = _martingale(policy, params, h)
  norms = exact_gradients.gradient_norms(
      exact_gradients.per_position_gradients_autodiff(policy, params, h))
  bound = jnp.sqrt(exact_gradients.expected_score_sq_norm(policy, params)
                   * martingale.harm_information(probs, mart.D))
  assert bool(jnp.all(norms <= bound + 1e-6)), (norms, bound)


def test_zero_gradient_beyond_the_horizon():
  policy = TabularPolicy(vocab_size=4, horizon=5, eos_id=tabular_harm.EOS)
  params = policy.init_params(jax.random.PRNGKey(4))
  # payload 1: harm is decided by the first two tokens.
  h = tabular_harm.Judge(payload=1)(None, jnp.asarray(policy.sequences), None)
  probs, mart = _martingale(policy, params, h)
  tau = martingale.harm_horizon(mart.cond_var, eps=0.0)
  assert int(jnp.max(tau)) == 2 and int(jnp.min(tau)) >= 1
  # Per trajectory: no increment after its own horizon.
  after = jnp.arange(1, policy.horizon + 1)[None, :] > tau[:, None]
  assert float(jnp.max(jnp.abs(jnp.where(after, mart.D, 0.0)))) == 0.0
  norms = exact_gradients.gradient_norms(
      exact_gradients.per_position_gradients_autodiff(policy, params, h))
  assert float(jnp.min(norms[:2])) > 1e-3
  assert float(jnp.max(norms[2:])) < 1e-7  # zero up to float32 rounding of the softmax sums
  info = martingale.harm_information(probs, mart.D)
  assert float(jnp.max(info[2:])) == 0.0
  dist = martingale.horizon_distribution(probs, tau, policy.horizon)
  np.testing.assert_allclose(jnp.sum(dist), 1.0, rtol=1e-6)
  assert float(jnp.sum(dist[3:])) == 0.0


def test_equilibrium_kl_tracks_harm_information_like_one_over_beta():
  with jax.enable_x64(True):
    policy, ref, h = tabular_harm.random_policy(seed=5, vocab=3, horizon=4)
    ref_probs = policy.sequence_probs(ref)
    errors, prefix_errors = [], []
    probs, mart = _martingale(policy, ref, h)
    var = martingale.next_step_variance(probs, policy.node_ids(jnp.asarray(policy.sequences)),
                                        mart.H, policy.num_nodes)
    np.testing.assert_allclose(jnp.einsum('n,nt->t', probs, var),
                               martingale.harm_information(probs, mart.D), rtol=1e-9)
    for beta in (8.0, 32.0, 128.0):
      star = equilibrium.optimal_params(policy, ref, h, beta)
      np.testing.assert_allclose(policy.sequence_probs(star),
                                 equilibrium.optimal_sequence_probs(ref_probs, h, beta),
                                 rtol=1e-9, atol=1e-12)
      kl = equilibrium.per_position_kl(policy, star, ref)
      pred = equilibrium.predicted_kl(policy, ref, h, beta)
      assert float(jnp.min(pred)) > 0
      errors.append(float(jnp.max(jnp.abs(kl / pred - 1.0))))
      # Prefix by prefix too: KL(pi*(.|u) || pi_ref(.|u)) ~ Var_ref(H_t | u) / (2 beta^2).
      kl_u, pred_u = equilibrium.per_prefix_kl(policy, star, ref, h, beta)
      informative = pred_u > 1e-3 * jnp.max(pred_u)
      prefix_errors.append(float(jnp.max(jnp.where(
          informative, jnp.abs(kl_u / jnp.where(informative, pred_u, 1.0) - 1.0), 0.0))))
      # Chain rule: the per-position KLs add up to the KL of the response laws.
      star_probs = policy.sequence_probs(star)
      joint = jnp.sum(star_probs * (jnp.log(star_probs) - jnp.log(ref_probs)))
      np.testing.assert_allclose(jnp.sum(kl), joint, rtol=1e-8)
    # Relative error O(1/beta): a 4x larger beta cuts it about 4x.
    assert errors[0] < 0.5
    for errs in (errors, prefix_errors):
      for a, b in zip(errs, errs[1:]):
        assert 2.5 < a / b < 6.0, errs


def test_recovery_gradient_reaches_beyond_the_standard_horizon():
  policy = TabularPolicy(vocab_size=4, horizon=5, eos_id=tabular_harm.EOS)
  params = tabular_harm.shallow_params(policy)
  judge = tabular_harm.Judge(payload=3)
  h = judge(None, jnp.asarray(policy.sequences), None)
  standard = exact_gradients.gradient_norms(
      exact_gradients.per_position_gradients_autodiff(policy, params, h))
  harmful = jnp.asarray([tabular_harm.SURE] + [tabular_harm.PAY] * 4, jnp.int32)
  recovery = exact_gradients.gradient_norms(
      exact_gradients.recovery_gradients(policy, params, h, harmful, [1.0, 1.0, 1.0]))
  # The standard objective's horizon: almost every response refuses at position 1, which
  # decides the harm (tau = 1 with probability > 1 - 1e-4).
  probs, mart = _martingale(policy, params, h)
  tau = martingale.harm_horizon(mart.cond_var, eps=1e-6)
  dist = martingale.horizon_distribution(probs, tau, policy.horizon)
  assert float(jnp.sum(dist[:2])) > 1 - 1e-4
  # Beyond it the standard gradient is negligible; the recovery objective's is not.
  assert float(jnp.max(standard[1:])) < 1e-4
  assert float(jnp.min(recovery[1:4])) > 1e-2, recovery
  assert bool(jnp.all(recovery[1:4] > 1e3 * standard[1:4]))
  # Position 5 comes after the payload is complete: the harm is decided, no gradient either way.
  assert float(standard[4]) < 1e-7 and float(recovery[4]) < 1e-7
  # From depth 3 (SURE PAY PAY) a refusal at position 4 is still possible: gradient there only.
  depth3 = exact_gradients.gradient_norms(exact_gradients.per_position_gradients_autodiff(
      policy, params, h, harmful, 3))
  assert float(jnp.max(depth3[:3])) == 0.0 and float(depth3[3]) > 1e-2
  assert float(depth3[4]) < 1e-7


def test_tabular_rejects_bad_shapes():
  with pytest.raises(UserError, match='vocab_size'):
    TabularPolicy(vocab_size=1, horizon=3)
  with pytest.raises(UserError, match='Monte-Carlo'):
    TabularPolicy(vocab_size=50, horizon=8)


def test_at_a_complying_base_recovery_and_standard_gradients_differ_only_by_visitation():
  """Both objectives' position-t gradient is the same per-state vector; off the harmful path the
  harm is decided (G = 0), so on a base that complies, recovery_t / standard_t is exactly the
  visitation ratio sum_{k<t} p(k) P(ỹ_k+1..t-1 | ỹ_<=k) / P(ỹ_<t), which is <= 1 there: the
  standard gradient cannot vanish beyond the horizon while the recovery one does not."""
  policy = TabularPolicy(vocab_size=4, horizon=5, eos_id=tabular_harm.EOS)
  logits = np.zeros((policy.num_param_rows, policy.vocab_size), np.float32)
  logits[:, tabular_harm.PAY] = 6.0  # pays out, rarely leaves the payload (a complying base)
  logits[0] = [0.0, 3.0, -4.0, 0.0]  # the first token: mostly SURE
  params = {'logits': jnp.asarray(logits)}
  judge = tabular_harm.Judge(payload=3)
  h = judge(None, jnp.asarray(policy.sequences), None)
  harmful = jnp.asarray([tabular_harm.SURE] + [tabular_harm.PAY] * 4, jnp.int32)
  depth_probs = np.ones(3) / 3
  standard = exact_gradients.gradient_norms(
      exact_gradients.per_position_gradients_autodiff(policy, params, h))
  recovery = exact_gradients.gradient_norms(
      exact_gradients.recovery_gradients(policy, params, h, harmful, depth_probs))
  step = np.exp(np.asarray(policy.token_logprobs(params, harmful[None]))[0])  # pi(ỹ_j | ỹ_<j)
  for t in range(2, 5):  # positions 2..4: the payload, undecided until it completes
    reach = lambda k: np.prod(step[k:t - 1])  # P(ỹ_k+1..t-1 | ỹ_<=k)
    visit = sum(depth_probs[k] * reach(k) for k in range(min(t, 3))) / reach(0)
    np.testing.assert_allclose(recovery[t - 1] / standard[t - 1], visit, rtol=1e-4)
    assert visit <= 1 / np.prod(step[:2]) + 1e-6  # ~1: the base is on the path already
  assert float(standard[1]) > 1e-4  # the base leaves the payload with small probability
  # The two base thresholds together: <= 1% for one, >= 10% for the other.
  tail_std = float(jnp.max(standard[2:4]) / jnp.max(standard))
  tail_rec = float(jnp.mean(recovery[2:4]) / jnp.maximum(jnp.max(standard), jnp.max(recovery)))
  assert tail_rec <= tail_std / np.prod(step[:2])
