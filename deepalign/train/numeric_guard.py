"""An optax wrapper that skips an update whose loss or gradient is not finite, or spikes.

    tx = numeric_guard(optax.adamw(...))                 # NaN/inf updates are skipped
    tx = numeric_guard(inner, spike_factor=10.0)         # ... and loss > 10 x its running median

Skipping happens inside the jitted step, with `jnp.where` (no host sync, no `lax.cond`): the
update returned is zero and the inner optimizer state is kept as it was, so a skipped update
leaves params and moments bit-identical. Every stage gets it through `build_optimizer`, whatever
its step does (the fused RL steps call `tx.update` once per minibatch).

The value watched for spikes is the `loss=` extra argument when the step passes one (the generic
loop's step does), else the gradient's global norm (the RL steps, whose surrogate loss can be
negative). `GuardState` counts skipped updates (`nonfinite`, `spikes`) and the current run of
consecutive skips (`in_row`); the loop reports them and stops after `train.max_bad_steps` in a row.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax


class GuardState(NamedTuple):
  """inner: the wrapped optimizer's state; counters are int32 scalars; history: the last
  `window` accepted watched values (NaN = not yet filled), newest first."""
  inner: optax.OptState
  nonfinite: jax.Array   # updates skipped for a non-finite loss or gradient, in total
  spikes: jax.Array      # updates skipped as spikes, in total
  in_row: jax.Array      # consecutive skipped updates up to now (0 after an applied one)
  history: jax.Array     # [window] float32


def numeric_guard(inner: optax.GradientTransformation, spike_factor: float = 0.0,
                  spike_window: int = 32, spike_min_history: int = 8
                  ) -> optax.GradientTransformationExtraArgs:
  """Wraps `inner`: an update is applied only if it is finite and (spike_factor > 0) its
  watched value is <= spike_factor x the median of the last `spike_window` accepted ones
  (checked once `spike_min_history` values are known)."""
  if spike_factor < 0:
    raise ValueError(f'spike_factor={spike_factor} must be >= 0')
  window = max(int(spike_window), 1)

  def init(params: Any) -> GuardState:
    zero = jnp.zeros((), jnp.int32)
    return GuardState(inner=inner.init(params), nonfinite=zero, spikes=zero, in_row=zero,
                      history=jnp.full((window,), jnp.nan, jnp.float32))

  def update(updates, state: GuardState, params=None, *, loss=None, **extra):
    del extra  # the inner transformation gets none (clip/adam/MultiSteps take no extras)
    grad_norm = optax.tree.norm(updates)
    finite = jnp.isfinite(grad_norm)
    if loss is not None:
      finite &= jnp.isfinite(loss)
    watched = (grad_norm if loss is None else jnp.asarray(loss)).astype(jnp.float32)
    spike = jnp.zeros((), bool)
    if spike_factor > 0:
      known = jnp.sum(~jnp.isnan(state.history))
      median = jnp.nanmedian(state.history)
      spike = finite & (known >= min(spike_min_history, window)) & (
          watched > spike_factor * median)
    ok = finite & ~spike
    new_updates, new_inner = inner.update(updates, state.inner, params)
    keep = lambda new, old: jnp.where(ok, new, old)
    new_updates = jax.tree.map(lambda u: jnp.where(ok, u, jnp.zeros_like(u)), new_updates)
    history = jnp.where(ok, jnp.roll(state.history, 1).at[0].set(watched), state.history)
    return new_updates, GuardState(
        inner=jax.tree.map(keep, new_inner, state.inner),
        nonfinite=state.nonfinite + (~finite).astype(jnp.int32),
        spikes=state.spikes + spike.astype(jnp.int32),
        in_row=jnp.where(ok, 0, state.in_row + 1).astype(jnp.int32),
        history=history)

  return optax.GradientTransformationExtraArgs(init, update)


def guard_state(opt_state: Any) -> GuardState | None:
  """The GuardState of an optimizer state built by `build_optimizer` (the outermost), or None."""
  return opt_state if isinstance(opt_state, GuardState) else None
