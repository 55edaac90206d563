"""KL estimators (sign convention, unbiasedness) and the Ziegler et al. controllers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.errors import UserError
from deepalign.objectives import kl


def test_estimators_by_hand():
  # pi = 1/2, pi_ref = 1/4: logr = ln 2
  lp, ref = jnp.array([math.log(0.5)]), jnp.array([math.log(0.25)])
  assert float(kl.kl_estimate(lp, ref, 'k1')[0]) == pytest.approx(0.693147, abs=1e-6)
  assert float(kl.kl_estimate(lp, ref, 'k2')[0]) == pytest.approx(0.240227, abs=1e-6)
  # k3 = pi_ref/pi - 1 + ln 2 = 0.5 - 1 + 0.693147
  assert float(kl.kl_estimate(lp, ref, 'k3')[0]) == pytest.approx(0.193147, abs=1e-6)


def test_k1_k3_unbiased_for_kl_policy_to_ref():
  pi = np.array([0.5, 0.3, 0.2])
  ref = np.array([0.2, 0.3, 0.5])
  exact = float(np.sum(pi * np.log(pi / ref)))
  for est in ('k1', 'k3'):
    per = np.asarray(kl.kl_estimate(jnp.log(pi), jnp.log(ref), est))
    assert float(np.sum(pi * per)) == pytest.approx(exact, rel=1e-5)
  # k2 is biased but close for nearby distributions and never negative.
  assert bool(np.all(np.asarray(kl.kl_estimate(jnp.log(pi), jnp.log(ref), 'k2')) >= 0))


def test_k3_nonnegative_and_precise_near_zero():
  logr = jnp.array([-3.0, -1e-4, 0.0, 1e-4, 3.0])
  k3 = kl.kl_estimate(logr, jnp.zeros(5), 'k3')
  assert bool(jnp.all(k3 >= 0))
  assert float(k3[3]) == pytest.approx(0.5e-8, rel=1e-3)


def test_unknown_estimator():
  with pytest.raises(UserError, match='k3'):
    kl.kl_estimate(jnp.zeros(1), jnp.zeros(1), 'k4')


def test_adaptive_controller_by_hand():
  s = kl.kl_controller_init(0.1)
  # KL 12 vs target 6: error clipped to 0.2; beta * (1 + 0.2 * 256 / 10000) = 0.100512
  up = kl.adaptive_kl_update(s, 12.0, 256, target=6.0, horizon=10000.0)
  assert float(up.value) == pytest.approx(0.100512, rel=1e-6)
  # KL 5.4: error -0.1; beta * (1 - 0.1 * 0.0256) = 0.099744
  down = kl.adaptive_kl_update(s, 5.4, 256, target=6.0, horizon=10000.0)
  assert float(down.value) == pytest.approx(0.099744, rel=1e-6)


def test_controllers_are_jittable_pytrees():
  s = kl.kl_controller_init(0.2)
  step = jax.jit(lambda st, k: kl.adaptive_kl_update(st, k, 64, target=1.0, horizon=100.0))
  for _ in range(3):
    s = step(s, jnp.asarray(2.0))
  assert float(s.value) == pytest.approx(0.2 * (1 + 0.2 * 64 / 100) ** 3, rel=1e-5)
  assert len(jax.tree_util.tree_leaves(s)) == 1
  fixed = jax.jit(kl.fixed_kl_update)(kl.kl_controller_init(0.2), jnp.asarray(9.0), 64)
  assert float(fixed.value) == pytest.approx(0.2)


def test_controller_bad_target():
  with pytest.raises(UserError, match='target'):
    kl.adaptive_kl_update(kl.kl_controller_init(0.1), 1.0, 1, target=0.0, horizon=1.0)


def _expected_estimator_gradient(theta, ref_logp, estimator):
  """E_{x~pi}[grad_theta k(x)] exactly on a categorical pi = softmax(theta): every outcome,
  weighted by its (detached) probability, as a loss on on-policy samples differentiates."""
  p = jax.lax.stop_gradient(jax.nn.softmax(theta))
  return jax.grad(lambda t: jnp.sum(p * kl.kl_estimate(jax.nn.log_softmax(t), ref_logp,
                                                        estimator)))(theta)


def test_estimator_gradients_in_the_loss():
  # Issue 17 item 3 and NeMo-RL#2506 (k2 behaving like k1): in the loss, k1's gradient is 0 in
  # expectation, k2's is the reverse KL's, k3's the forward KL's ("A Comedy of Estimators").
  theta = jnp.array([0.3, -1.2, 0.8, 0.0, 2.0])
  ref_logp = jax.nn.log_softmax(jnp.array([1.0, 0.5, -0.5, 0.2, 0.0]))
  reverse = jax.grad(lambda t: jnp.sum(jax.nn.softmax(t) * (jax.nn.log_softmax(t) - ref_logp)))(
      theta)
  forward = jax.grad(lambda t: jnp.sum(jnp.exp(ref_logp) * (ref_logp - jax.nn.log_softmax(t))))(
      theta)
  g1, g2, g3 = (_expected_estimator_gradient(theta, ref_logp, e) for e in ('k1', 'k2', 'k3'))
  np.testing.assert_allclose(g1, 0.0, atol=1e-6)
  np.testing.assert_allclose(g2, reverse, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(g3, forward, rtol=1e-5, atol=1e-6)
  assert float(jnp.abs(reverse).max()) > 0.1 and float(jnp.abs(g2 - g1).max()) > 0.1
