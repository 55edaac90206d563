"""optax optimizer and learning-rate schedule from `config.optimizer`."""

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


def build_optimizer(cfg: ml_collections.ConfigDict, num_steps: int, *, guard: bool = True,
                    spike_factor: float = 0.0, spike_window: int = 32
                    ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """(tx, schedule): clip -> optimizer with schedule, wrapped in MultiSteps if accumulating,
  and (guard) in `numeric_guard`: a non-finite (or, spike_factor > 0, spiking) batch gradient
  is skipped before it reaches the accumulator or the moments.

  `num_steps` counts batches; with `grad_accum_steps` = A the optimizer updates
  every A batches (gradients averaged), so the schedule spans num_steps // A updates.
  """
  accum = int(cfg.grad_accum_steps)
  if accum < 1:
    raise UserError(f'config.optimizer.grad_accum_steps={accum} must be >= 1')
  if cfg.name not in _OPTIMIZERS:
    raise UserError(f"config.optimizer.name='{cfg.name}' is unknown; use one of {', '.join(_OPTIMIZERS)}")
  schedule = build_schedule(cfg, max(num_steps // accum, 1))
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
