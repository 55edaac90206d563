"""The generic train loop: jitted step with donated state, eval, metrics, checkpoints, resume.

Resume is exact: the state (params, optimizer, step, key) and the data iterator's
position are checkpointed together and every random number comes from
`fold_in(key(seed), step)`, so a run interrupted at any point (SIGTERM, SIGKILL) and
re-run with the same workdir ends with the same parameters, bit for bit on CPU, as one
that never stopped.

Numeric guards: every optimizer update passes `numeric_guard` (train/numeric_guard.py), which
skips one whose loss or gradient is not finite (or spikes, `train.loss_spike_factor`) inside
the jitted step; the loop reports the counts (`guard/*` metrics) at each log and stops with a
UserError after `train.max_bad_steps` skipped updates in a row, saving nothing more (the last
checkpoint is the last good state). Frozen models of a state (`state.frozen`: the RL reference,
reward model and judge) are not checkpointed: they are rebuilt from their sources on resume.
"""

import dataclasses
import functools
import datetime
import os
import time
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec

from deepalign import parallel
from deepalign.errors import UserError
from deepalign.train import atomic_files, faults
from deepalign.train.checkpointing import Checkpointer
from deepalign.train.numeric_guard import guard_state
from deepalign.train.metrics_writer import MetricsWriter
from deepalign.train.optimizer import applied_learning_rate, build_optimizer
from deepalign.train.preemption import PreemptionGuard
from deepalign.train.state import TrainState
from deepalign.train.task import LossFn, Task

PyTree = Any


@dataclasses.dataclass
class TrainResult:
  state: TrainState
  preempted: bool            # stopped early by SIGTERM; re-run to continue
  eval_metrics: dict         # the last evaluation ({} if none ran in this process)
  results: dict              # what Task.finish returned ({} if preempted)


def init_rng(config: ml_collections.ConfigDict) -> jax.Array:
  """The key of parameter initialisation (the other half of the seed drives training)."""
  return jax.random.split(jax.random.PRNGKey(int(config.seed)))[0]


def _train_rng(config: ml_collections.ConfigDict) -> jax.Array:
  return jax.random.split(jax.random.PRNGKey(int(config.seed)))[1]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, grad_accum_steps: int = 1,
                    state_shardings: Any = None, metrics_sharding: Any = None):
  """jit(state, frozen, batch) -> (state, metrics); `state` is donated.

  metrics: the loss_fn's scalars plus `loss`, `grad_norm` (before clipping) and
  `learning_rate` (the one this batch's update applies: the schedule at the optimizer's own
  update count, `optimizer.applied_learning_rate`; skipped updates do not advance it). With
  shardings given,
  the new state keeps the layout of the old one (donation reuses its buffers). The loss goes
  to the optimizer too (`loss=`): `numeric_guard` skips the update when it is not finite.
  """
  tx = optax.with_extra_args_support(tx)

  def step(state: TrainState, frozen: PyTree, batch: Mapping[str, jax.Array]):
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, aux), grads = grad_fn(state.params, frozen, batch, state.step_rng())
    lr = applied_learning_rate(schedule, state.opt_state, state.step // grad_accum_steps)
    updates, opt_state = tx.update(grads, state.opt_state, state.params, loss=loss)
    params = optax.apply_updates(state.params, updates)
    metrics = {**aux, 'loss': loss, 'grad_norm': optax.tree.norm(grads), 'learning_rate': lr}
    new_state = state.replace(params=params, opt_state=opt_state, step=state.step + 1)
    return new_state, metrics

  if state_shardings is None:
    return jax.jit(step, donate_argnums=(0,))
  return jax.jit(step, donate_argnums=(0,), out_shardings=(state_shardings, metrics_sharding))


@dataclasses.dataclass
class Placement:
  """Where the state lives: the mesh, and a sharding for every leaf of params and state."""
  mesh: jax.sharding.Mesh
  rules: Any
  params: Any   # pytree of NamedSharding, like the params
  state: Any    # pytree of shardings, like the TrainState
  replicated: NamedSharding


def place(task: Task, config: ml_collections.ConfigDict, tx: optax.GradientTransformation
          ) -> tuple[Placement, Any]:
  """(placement, abstract params): shardings from the task's logical axes and config.parallel.

  The state's shardings are read off the compiled TrainState.create, so nothing is
  allocated to find them (the optimizer state follows its params).
  """
  mesh = parallel.mesh_from_config(config.parallel)
  rules = config.parallel.rules
  replicated = NamedSharding(mesh, PartitionSpec())
  abstract = jax.eval_shape(lambda: task.init_params(init_rng(config)))
  if task.param_axes is None:
    param_shardings = jax.tree.map(lambda _: replicated, abstract)
  else:
    param_shardings = parallel.param_shardings(task.param_axes, abstract, mesh, rules)
  create = jax.jit(lambda p: task.create_state(p, tx, _train_rng(config)),
                   in_shardings=(param_shardings,))
  state_shardings = create.lower(abstract).compile().output_shardings
  if hasattr(state_shardings, 'opt_state') and hasattr(state_shardings, 'params'):
    # XLA gives zeros that depend on no input (the Adam moments) no sharding: replicated, a full
    # float32 copy of every trained parameter per moment on every device. They follow their params.
    opt_state = jax.eval_shape(create, abstract).opt_state
    state_shardings = state_shardings.replace(opt_state=optax.tree_map_params(
        tx, lambda _, sharding: sharding, opt_state, state_shardings.params,
        transform_non_params=lambda _: replicated))
  return Placement(mesh, rules, param_shardings, state_shardings, replicated), abstract


def _place_frozen(frozen: PyTree, params_abstract: PyTree, placement: Placement) -> PyTree:
  """A frozen copy of the params (reference model) is sharded like them; anything else replicated."""
  if frozen is None:
    return None
  same = jax.tree.structure(frozen) == jax.tree.structure(params_abstract) and all(
      a.shape == b.shape for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(params_abstract)))
  return jax.device_put(frozen, placement.params if same else placement.replicated)


def _prefixed(prefix: str, metrics: Mapping[str, Any]) -> dict:
  return {f'{prefix}/{k}': v for k, v in metrics.items()}


def _mean_window(window: list[dict]) -> dict:
  """Averages the per-step metrics since the last log (one host sync per log)."""
  host = jax.device_get(window)
  return {k: float(np.mean([np.asarray(m[k], np.float64) for m in host])) for k in host[0]}


def _next_batch(iterator, step: int):
  try:
    return next(iterator)
  except StopIteration:
    raise UserError(f'the training data ran out after {step} batches; lower '
                    'config.train.num_steps or make the pipeline repeat') from None


def _format_eta(seconds: float) -> str:
  return str(datetime.timedelta(seconds=int(max(seconds, 0))))


class NumericStop(UserError):
  """train.max_bad_steps optimizer updates in a row were skipped (non-finite or spiking)."""


def _saved_part(state: Any) -> Any:
  """What a checkpoint holds: the state without its frozen models (rebuilt on resume)."""
  return state.replace(frozen=None) if getattr(state, 'frozen', None) is not None else state


def _guard_counts(state: Any) -> dict[str, int]:
  """{'nonfinite', 'spikes', 'in_row'} of the state's numeric guard ({} without one); a host sync."""
  guard = guard_state(getattr(state, 'opt_state', None))
  if guard is None:
    return {}
  values = jax.device_get((guard.nonfinite, guard.spikes, guard.in_row))
  return dict(zip(('nonfinite', 'spikes', 'in_row'), (int(v) for v in values)))


def _check_train_config(tcfg: ml_collections.ConfigDict) -> None:
  for name in ('num_steps', 'log_every', 'eval_every', 'checkpoint_every', 'batch_size'):
    if int(tcfg[name]) < 0:
      raise UserError(f'config.train.{name}={tcfg[name]} must be >= 0')
  if int(tcfg.get('max_bad_steps', 0)) < 0:
    raise UserError(f'config.train.max_bad_steps={tcfg.max_bad_steps} must be >= 0 (0 = never stop)')
  if float(tcfg.get('loss_spike_factor', 0.0)) < 0 or int(tcfg.get('loss_spike_window', 32)) < 1:
    raise UserError('config.train.loss_spike_factor must be >= 0 (0 = off) and '
                    'config.train.loss_spike_window >= 1')


def train(task: Task, config: ml_collections.ConfigDict, workdir: str,
          guard: PreemptionGuard | None = None,
          on_start: Callable[[], None] | None = None) -> TrainResult:
  """Trains `task` for config.train.num_steps batches in `workdir`, resuming if possible.

  on_start: called once the run is known to start or resume (a checkpoint this config cannot
  resume raises UserError before it), e.g. to record the config in the workdir.
  """
  tcfg = config.train
  num_steps = int(tcfg.num_steps)
  _check_train_config(tcfg)
  log_every = max(int(tcfg.log_every), 1)
  max_bad = int(tcfg.get('max_bad_steps', 0))
  # The schedule counts optimizer updates, not batches (the RL steps update per minibatch).
  tx, schedule = build_optimizer(config.optimizer, num_steps,
                                 spike_factor=float(tcfg.get('loss_spike_factor', 0.0)),
                                 spike_window=int(tcfg.get('loss_spike_window', 32)),
                                 updates_per_batch=int(task.updates_per_batch))

  placement, abstract_params = place(task, config, tx)
  create = jax.jit(lambda p: task.create_state(p, tx, _train_rng(config)),
                   out_shardings=placement.state)
  # A checkpoint resumes on another device count or mesh, not with another batch or process count.
  layout = {'global_batch_size': int(tcfg.batch_size), 'process_count': jax.process_count(),
            'device_count': jax.device_count(), 'mesh': dict(placement.mesh.shape)}
  data = task.train_iterator()  # before the checkpoint directory: a data error writes nothing
  checkpointer = Checkpointer(workdir, max_to_keep=int(tcfg.max_to_keep),
                              async_save=bool(tcfg.async_checkpointing),
                              best_metric=str(tcfg.best_metric), best_mode=str(tcfg.best_mode),
                              layout=layout)
  abstract = jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          jax.eval_shape(create, abstract_params), placement.state)
  restored = checkpointer.restore_latest(_saved_part(abstract))
  latest = None if restored is None else restored[2]
  if restored is None or getattr(abstract, 'frozen', None) is not None:
    params = jax.device_put(task.init_params(init_rng(config)), placement.params)
    if restored is None:
      # The step donates the state: it must not alias arrays the task keeps (a reference
      # model loaded from the same checkpoint, `frozen`).
      state = create(jax.tree.map(jnp.copy, params))
    else:  # only the frozen models, from their sources (XLA drops the rest of create)
      frozen_of = jax.jit(lambda p: task.create_state(p, tx, _train_rng(config)).frozen,
                          out_shardings=placement.state.frozen)
      state = restored[0].replace(frozen=frozen_of(params))
    del params
  elif restored is not None:
    state = restored[0]
  if restored is not None:
    data.set_state(restored[1])
  del restored
  split = sum(not s.is_fully_replicated for s in jax.tree.leaves(placement.params))
  logging.info('mesh %s: %d of %d parameter arrays sharded', dict(placement.mesh.shape), split,
               len(jax.tree.leaves(placement.params)))
  step = int(jax.device_get(state.step))
  if latest is not None and step > num_steps:
    raise UserError(f'{workdir} holds a checkpoint at step {step} > config.train.num_steps='
                    f'{num_steps}; raise num_steps or use a fresh --workdir')
  is_main = jax.process_index() == 0
  writer = MetricsWriter(workdir, resume_step=step, enabled=is_main)
  make_step = task.make_step or functools.partial(make_train_step, task.loss_fn)
  train_step = make_step(tx, schedule, int(config.optimizer.grad_accum_steps),
                         placement.state, placement.replicated)
  # Traced under the mesh and rules: the models' activation constraints apply (batch sharded).
  train_step = parallel.with_activation_sharding(train_step, placement.mesh, placement.rules)
  frozen = _place_frozen(task.frozen, abstract_params, placement)

  def next_batch() -> dict:
    return parallel.shard_batch(_next_batch(data, step), placement.mesh, placement.rules)

  if on_start is not None:
    on_start()
  guard = guard or PreemptionGuard()
  preempted, eval_metrics, window = False, {}, []
  reported = {'nonfinite': 0, 'spikes': 0}

  def check_guard(at_step: int) -> dict[str, int]:
    """The guard's counts; warns of new skips; NumericStop after max_bad skips in a row."""
    counts = _guard_counts(state)
    if not counts:
      return counts
    new = {k: counts[k] - reported[k] for k in reported}
    if any(new.values()):
      logging.warning('step %d: skipped %d optimizer update(s) with a non-finite loss or gradient '
                      'and %d loss spike(s) (%d in a row)', at_step, new['nonfinite'],
                      new['spikes'], counts['in_row'])
      reported.update({k: counts[k] for k in reported})
    if max_bad and counts['in_row'] >= max_bad:
      checkpointer.wait()
      last = checkpointer.latest_step()
      kept = (f'its last checkpoint {checkpointer.directory}/{last} is intact (resume from it '
              'after the fix)' if last is not None else 'no checkpoint was written')
      raise NumericStop(
          f'stopped at step {at_step}: the last {counts["in_row"]} optimizer updates were skipped '
          f'for a non-finite loss or gradient or a loss spike (config.train.max_bad_steps='
          f'{max_bad}); nothing was saved after them and {kept}; lower '
          'config.optimizer.learning_rate, check the data, or use bfloat16-safe settings')
    return counts
  logging.info('%s at step %d of %d in %s', 'resuming' if latest is not None else 'starting',
               step, num_steps, workdir)

  def evaluate(at_step: int) -> dict:
    if task.eval_fn is None:
      return {}
    metrics = _prefixed('eval', {k: float(v) for k, v in task.eval_fn(state.params).items()})
    checkpointer.save_best(at_step, state.params, metrics)
    logging.info('eval at step %d: %s', at_step,
                 ' '.join(f'{k}={v:.4g}' for k, v in sorted(metrics.items())))
    return metrics

  try:
    with guard:
      if latest is None and tcfg.eval_at_start:
        writer.write(0, evaluate(0))  # the starting model's numbers, for comparison
      start_step, window_start = step, time.perf_counter()
      run_start = window_start
      while step < num_steps:
        state, metrics = train_step(state, frozen, next_batch())
        step += 1
        faults.kill_point('after_step', step)
        window.append(metrics)
        row = {}
        if step % log_every == 0 or step == num_steps:
          row = _prefixed('train', _mean_window(window))
          counts = check_guard(step)
          if counts:
            row.update({'guard/nonfinite_updates': counts['nonfinite'],
                        'guard/spike_updates': counts['spikes']})
          now = time.perf_counter()
          steps_per_s = len(window) / max(now - window_start, 1e-9)
          overall = (step - start_step) / max(now - run_start, 1e-9)
          row['perf/steps_per_s'] = steps_per_s
          logging.info('step %d/%d loss=%.4g %.2f steps/s ETA %s', step, num_steps,
                       row.get('train/loss', float('nan')), steps_per_s,
                       _format_eta((num_steps - step) / overall))
          window, window_start = [], now
        if step == num_steps or (tcfg.eval_every and step % tcfg.eval_every == 0):
          eval_metrics = evaluate(step)
          row.update(eval_metrics)
        if row:
          writer.write(step, row)
          faults.kill_point('after_log', step)
        stop = guard.should_stop(step)
        if step == num_steps or stop or (tcfg.checkpoint_every and step % tcfg.checkpoint_every == 0):
          check_guard(step)  # a run stopped by bad updates saves nothing more
          faults.kill_point('before_save', step)
          checkpointer.save(_saved_part(state), data.get_state(), force=True)
          faults.kill_point('after_save', step)
        if row:
          window_start = time.perf_counter()  # steps/s counts train steps, not eval or saving
        if stop and step < num_steps:
          preempted = True
          logging.warning('preempted: checkpoint saved at step %d; re-run the same command to resume', step)
          break
      checkpointer.wait()
      faults.kill_point('after_wait', step)
  finally:
    writer.close()
    checkpointer.close()
  results = {}
  if not preempted:
    if latest is not None and latest == num_steps:
      logging.info('%s already finished %d steps; nothing to train', workdir, num_steps)
    if task.finish is not None:
      faults.kill_point('before_finish', step)
      results = {k: float(v) for k, v in task.finish(state.params, workdir).items()}
      if is_main:
        atomic_files.write_json_atomic(os.path.join(workdir, 'results.json'),
                                       {'step': step, **results})
      faults.kill_point('after_finish', step)
  return TrainResult(state=state, preempted=preempted, eval_metrics=eval_metrics, results=results)
