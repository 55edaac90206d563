"""optax optimizer and learning-rate schedule from `config.optimizer`."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from deepalign.errors import UserError
from deepalign.train.numeric_guard import numeric_guard

_SCHEDULES = ('cosine', 'linear', 'constant')
_OPTIMIZERS = ('adamw', 'adam', 'sgd')


def build_schedule(cfg: ml_collections.ConfigDict, num_updates: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then cosine/linear decay or constant.

  `num_updates` = optimizer updates over the whole run (batches / grad_accum_steps).
  """
  if cfg.schedule not in _SCHEDULES:
    raise UserError(f"config.optimizer.schedule='{cfg.schedule}' is unknown; use one of {', '.join(_SCHEDULES)}")
  if cfg.warmup_steps < 0 or cfg.learning_rate < 0:
    raise UserError('config.optimizer.warmup_steps and learning_rate must be >= 0')
  peak, warmup = float(cfg.learning_rate), int(cfg.warmup_steps)
  end = peak * float(cfg.end_lr_ratio)
  decay_steps = max(num_updates - warmup, 1)
  if cfg.schedule == 'constant':
    main = optax.constant_schedule(peak)
  elif cfg.schedule == 'linear':
    main = optax.linear_schedule(peak, end, decay_steps)
  else:
    main = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(cfg.end_lr_ratio))
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def num_updates(num_steps: int, updates_per_batch: int, grad_accum_steps: int) -> int:
  """Optimizer updates over a run: num_steps * updates_per_batch // grad_accum_steps (>= 1).

  updates_per_batch: `tx.update` calls per batch (1 for SFT / RM / DPO; epochs x minibatches
  for PPO / GRPO, whose fused step updates once per minibatch); with `grad_accum_steps` = A,
  MultiSteps applies one update every A calls.
  """
  return max(int(num_steps) * int(updates_per_batch) // int(grad_accum_steps), 1)


def build_optimizer(cfg: ml_collections.ConfigDict, num_steps: int, *, guard: bool = True,
                    spike_factor: float = 0.0, spike_window: int = 32,
                    updates_per_batch: int = 1
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, schedule): clip -> optimizer with schedule, wrapped in MultiSteps if accumulating,
  and (guard) in `numeric_guard`: a non-finite (or, spike_factor > 0, spiking) batch gradient
  is skipped before it reaches the accumulator or the moments.

  `num_steps` counts batches, each making `updates_per_batch` `tx.update` calls; with
  `grad_accum_steps` = A the optimizer updates every A calls (gradients averaged), so the
  schedule spans `num_updates(num_steps, updates_per_batch, A)` updates. optax evaluates it at
  the optimizer's own update count (`schedule_count`), never at the batch step: sized in
  batches, an RL run with 4 epochs x 2 minibatches would finish its cosine decay at 1/8 of
  the run (issue 17 item 1).
  """
  accum = int(cfg.grad_accum_steps)
  if accum < 1:
    raise UserError(f'config.optimizer.grad_accum_steps={accum} must be >= 1')
  if int(updates_per_batch) < 1:
    raise UserError(f'{updates_per_batch} optimizer updates per batch; need >= 1')
  if cfg.name not in _OPTIMIZERS:
    raise UserError(f"config.optimizer.name='{cfg.name}' is unknown; use one of {', '.join(_OPTIMIZERS)}")
  schedule = build_schedule(cfg, num_updates(num_steps, updates_per_batch, accum))
  if cfg.name == 'adamw':
    opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
  elif cfg.name == 'adam':
    opt = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  else:
    opt = optax.sgd(schedule, momentum=cfg.momentum or None)
  parts = []
  if cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
  parts.append(opt)
  tx = optax.chain(*parts)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
  if guard:
    tx = numeric_guard(tx, spike_factor=float(spike_factor), spike_window=int(spike_window))
  return tx, schedule


def schedule_count(opt_state: optax.OptState) -> jax.Array | None:
  """The update count the learning-rate schedule reads (optax's `ScaleByScheduleState.count`:
  updates applied so far; MultiSteps' non-final micro-steps and updates the numeric guard
  skipped do not advance it), or None when the optimizer has no schedule state."""
  states = [x for x in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByScheduleState))
            if isinstance(x, optax.ScaleByScheduleState)]
  return states[0].count if states else None


def applied_learning_rate(schedule: optax.Schedule, opt_state: optax.OptState,
                          fallback_count: jax.Array | int = 0) -> jax.Array:
  """The learning rate the next applied update uses: schedule(schedule_count(opt_state)).

  Read it from the state BEFORE `tx.update`; `fallback_count` is used when the state has no
  schedule count (an optimizer not built by `build_optimizer`)."""
  count = schedule_count(opt_state)
  return jnp.asarray(schedule(fallback_count if count is None else count), jnp.float32)
