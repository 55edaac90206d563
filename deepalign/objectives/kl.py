"""Per-token KL estimators and the KL-coefficient controllers of Ziegler et al. 2019.

Sign convention. Tokens are sampled from the policy pi and we estimate
KL(pi || pi_ref) = E_pi[log pi - log pi_ref]. With

    logr = log pi(y_t) - log pi_ref(y_t)          (policy minus reference)

the estimators of Schulman, "Approximating KL Divergence" (2020), are

    k1 = logr                       unbiased, high variance, can be negative
    k2 = 0.5 logr^2                 biased, low variance, >= 0
    k3 = exp(-logr) - 1 + logr      unbiased, low variance, >= 0

(Schulman writes r = pi_ref / pi, so his log r is our -logr; his k1 = -log r, k3 =
(r - 1) - log r are the same numbers.) TRL's PPO uses k1 (`kl_estimator='k1'`) or k3, GRPO
uses k3.

Values vs. gradients (Shah et al. 2025, "A Comedy of Estimators", arXiv 2512.21852; Tang &
Munos 2025, arXiv 2506.09477). Differentiated as a loss through log pi at on-policy samples
(the sampling distribution held fixed), per token:

    E_pi[grad k1] = E_pi[grad log pi]                  = 0                      (does nothing)
    E_pi[grad k2] = E_pi[logr grad log pi]             = grad KL(pi || pi_ref)  (reverse KL)
    E_pi[grad k3] = E_pi[(1 - pi_ref / pi) grad log pi] = grad KL(pi_ref || pi) (forward KL)

so an unbiased value (k1, k3) does not make an unbiased gradient of the reverse KL; k2, biased
as a value, is the one whose gradient is. As a detached reward penalty (Ziegler et al.), k1
enters the policy gradient as a return, which is the sequence-level reverse-KL gradient
including how a token changes the later tokens' KL; in the loss every estimator gives that
per-token (partial) gradient only. tests/objectives/test_kl.py checks the three identities
exactly on a small categorical.
"""

from typing import Literal

import flax.struct
import jax
import jax.numpy as jnp

from deepalign.errors import UserError

KLEstimator = Literal['k1', 'k2', 'k3']
KL_ESTIMATORS: tuple[str, ...] = ('k1', 'k2', 'k3')
# A log-prob below this is of a token a top-k / top-p filter dropped (`rollout.filters` puts
# their logits at -1e30): probability 0 under the filtered policy.
DROPPED_LOGPROB = -1e29


def kl_estimate(
    logprobs: jax.Array, ref_logprobs: jax.Array, estimator: KLEstimator = 'k1') -> jax.Array:
  """Per-token KL(pi || pi_ref) estimate from log-probs of tokens sampled from pi.

  Args:
    logprobs: `[...]` log pi of the sampled tokens.
    ref_logprobs: `[...]` log pi_ref of the same tokens.
    estimator: 'k1' | 'k2' | 'k3' (module doc).
  Returns:
    `[...]` float32 per-token estimate (no masking: mask when aggregating).
  """
  logr = logprobs.astype(jnp.float32) - ref_logprobs.astype(jnp.float32)
  if estimator == 'k1':
    return logr
  if estimator == 'k2':
    return 0.5 * logr ** 2
  if estimator == 'k3':
    # expm1 keeps precision when pi ~ pi_ref (logr ~ 0), where k3 ~ logr^2 / 2.
    return jnp.expm1(-logr) + logr
  raise UserError(f'unknown KL estimator {estimator!r}; use one of {", ".join(KL_ESTIMATORS)}')


@flax.struct.dataclass
class KLControllerState:
  """The controller's state: the current KL coefficient beta (a scalar array)."""
  value: jax.Array


def kl_controller_init(init_kl_coef: float) -> KLControllerState:
  """State for either controller, starting at beta = `init_kl_coef`."""
  return KLControllerState(value=jnp.asarray(init_kl_coef, jnp.float32))


def fixed_kl_update(
    state: KLControllerState, current_kl: jax.Array, n_steps: jax.Array | int) -> KLControllerState:
  """Fixed controller: beta never changes (signature shared with `adaptive_kl_update`)."""
  del current_kl, n_steps
  return state


def adaptive_kl_update(
    state: KLControllerState,
    current_kl: jax.Array,
    n_steps: jax.Array | int,
    target: float,
    horizon: float,
) -> KLControllerState:
  """Ziegler et al. 2019 (arXiv 1909.08593, Sec. 2.2) proportional controller.

    e = clip(KL / target - 1, -0.2, 0.2);   beta <- beta * (1 + e * n_steps / horizon)

  as in `AdaptiveKLController` of lm-human-preferences and TRL.

  Args:
    state: current beta.
    current_kl: scalar, the measured KL(pi || pi_ref) per sequence of the last batch.
    n_steps: number of samples (episodes) that batch contained.
    target: KL_target (> 0).
    horizon: K_beta, in samples (> 0).
  Returns:
    the new state (jittable, no Python control flow on arrays).
  """
  if target <= 0 or horizon <= 0:
    raise UserError(f'adaptive KL controller needs target > 0 and horizon > 0, got '
                    f'target={target}, horizon={horizon}; set kl.target / kl.horizon')
  error = jnp.clip(jnp.asarray(current_kl, jnp.float32) / target - 1.0, -0.2, 0.2)
  mult = 1.0 + error * jnp.asarray(n_steps, jnp.float32) / horizon
  return KLControllerState(value=state.value * mult)
