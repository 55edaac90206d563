"""orbax checkpoints of the train state together with the data iterator's position.

DIR/checkpoints/<step>/{state,data}: `state` is the TrainState (orbax StandardSave),
`data` the grain iterator state as JSON, saved in the same atomic step so a restore
resumes both at the same batch. DIR/best/<step>/params keeps the parameters of the best
evaluations by `config.train.best_metric`, separately so that keep-N of the latest
checkpoints (what resume needs) never deletes the best one, or vice versa.

A checkpoint restores onto any device count or mesh: the state is saved as global arrays
and read back with the shardings of the restoring run. `data` also records the run's
layout (`layout=` of the Checkpointer); of it, the global batch size and the number of
processes must match to resume (`MUST_MATCH`), the device count and mesh may change.

With several processes each reads its own shard through its own iterator, and their positions
differ once packing or dropped rows consume different numbers of records. `save` gathers every
process's iterator state onto every process (orbax writes the JSON item from the primary one) as
`data['processes'][i]`, and `restore` hands each process its own entry. Checkpoints written before
that hold one state for all processes (`{'json': ...}` or `{'bytes': ...}` at the top level) and
still restore, to every process.
"""

import base64
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from deepalign.errors import UserError
from deepalign.train.state import TrainState

PyTree = Any


# What the saved data position and step count mean, so a resume must keep them:
MUST_MATCH = {
    # a step is a batch of this many rows: the step count, the LR schedule and the
    # recorded metrics count such steps, so another size would not continue this run.
    'global_batch_size': 'config.train.batch_size',
    # each process's data position is one in its shard (records i, i + n, ... of n
    # processes); with another process count it would point elsewhere in the data.
    'process_count': 'the number of processes (jax.process_count())',
}


def _encode_one(state: Any) -> dict:
  """grain iterator states are dicts (dataset API) or JSON bytes (DataLoader)."""
  return ({'bytes': base64.b64encode(state).decode('ascii')} if isinstance(state, bytes)
          else {'json': state})


def _gather_json(value: Any) -> list[Any]:
  """[value of process 0, value of process 1, ...] on every process; a collective call."""
  if jax.process_count() == 1:
    return [value]
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  raw = np.frombuffer(json.dumps(value).encode('utf-8'), dtype=np.uint8)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(raw.size))).reshape(-1)
  # Padded to a power of two so that a slowly growing state does not recompile at every save.
  width = 1 << max(int(lengths.max()) - 1, 1).bit_length()
  padded = np.zeros(width, np.uint8)
  padded[:raw.size] = raw
  rows = np.asarray(multihost_utils.process_allgather(padded))
  return [json.loads(rows[i, :n].tobytes().decode('utf-8')) for i, n in enumerate(lengths)]


def _encode_data_state(state: Any, layout: Mapping[str, Any] | None = None) -> dict:
  """{'processes': [encoded state of process i, ...], 'layout': ...}: gathers (collectively)."""
  encoded: dict[str, Any] = {'processes': _gather_json(_encode_one(state))}
  if layout:
    encoded['layout'] = dict(layout)
  return encoded


def _decode_one(saved: Mapping[str, Any]) -> Any:
  if 'bytes' in saved:
    return base64.b64decode(saved['bytes'])
  return saved['json']


def _decode_data_state(saved: Mapping[str, Any], where: str = 'checkpoint') -> Any:
  """This process's data state; a checkpoint without 'processes' has one state for all."""
  if 'processes' not in saved:
    return _decode_one(saved)
  states, index = saved['processes'], jax.process_index()
  if len(states) != jax.process_count():
    raise UserError(f'{where} holds the data positions of {len(states)} processes and this run has '
                    f'{jax.process_count()}; resume it with {len(states)} processes or use a fresh '
                    '--workdir')
  return _decode_one(states[index])


class Checkpointer:
  """Latest-N checkpoints for resume, plus an optional best-by-metric params directory."""

  def __init__(self, workdir: str, max_to_keep: int = 2, async_save: bool = True,
               best_metric: str = '', best_mode: str = 'max',
               layout: Mapping[str, Any] | None = None):
    """layout: JSON values describing how this run is laid out (MUST_MATCH keys are checked
    on restore, other keys only reported when they changed), saved with every checkpoint."""
    self.layout = dict(layout or {})
    if best_mode not in ('max', 'min'):
      raise UserError(f"config.train.best_mode='{best_mode}' must be 'max' or 'min'")
    self.directory = os.path.abspath(os.path.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        item_names=('state', 'data'),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save))
    self.best_metric = best_metric
    self.best_manager = None
    if best_metric:
      self.best_manager = ocp.CheckpointManager(
          os.path.abspath(os.path.join(workdir, 'best')),
          item_names=('params',),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, cleanup_tmp_directories=True,
              best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode,
              keep_checkpoints_without_metrics=False,
              enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, data_state: Any, force: bool = False) -> None:
    """Saves `state` and this process's `data_state`; every process must call it (collective)."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(_encode_data_state(data_state, self.layout))), force=force)

  def save_best(self, step: int, params: PyTree, metrics: dict[str, float]) -> None:
    """Offers `params` to the best-of directory; orbax keeps it only if it is the best."""
    if self.best_manager is None:
      return
    if self.best_metric not in metrics:
      raise UserError(f"config.train.best_metric='{self.best_metric}' is not an eval metric; "
                      f"available: {', '.join(sorted(metrics))}")
    self.best_manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                           metrics={k: float(v) for k, v in metrics.items()}, force=True)

  def restore(self, abstract_state: TrainState, step: int | None = None
              ) -> tuple[TrainState, Any]:
    """(state, data_state) at `step` (default latest), with the shapes/shardings given.

    data_state is this process's own iterator state (the one state of an older checkpoint)."""
    step = self.latest_step() if step is None else step
    logging.info('restoring checkpoint %s/%d', self.directory, step)
    # The data item first: it is small, and says whether this run may resume the checkpoint.
    data = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data']
    self._check_layout(step, data.get('layout', {}))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
    except (ValueError, KeyError, TypeError) as e:
      raise UserError(f'checkpoint {self.directory}/{step} does not match this config '
                      f'({type(e).__name__}: {str(e).splitlines()[0][:200]}); '
                      'use a fresh --workdir or the config it was trained with') from e
    return restored['state'], _decode_data_state(data, f'checkpoint {self.directory}/{step}')

  def _check_layout(self, step: int, saved: Mapping[str, Any]) -> None:
    """UserError if a MUST_MATCH value differs; a log line for other changes (device count, mesh).

    Checkpoints written before layouts were recorded have none and are not checked."""
    for key, what in MUST_MATCH.items():
      if key in saved and key in self.layout and saved[key] != self.layout[key]:
        raise UserError(
            f'checkpoint {self.directory}/{step} was written with {what} = {saved[key]} and this '
            f'run has {self.layout[key]}; resume it with {saved[key]} (the device count and mesh '
            'may change) or use a fresh --workdir')
    changed = {k: (saved[k], v) for k, v in self.layout.items()
               if k not in MUST_MATCH and k in saved and saved[k] != v}
    if changed:
      logging.info('checkpoint %s/%d was written with %s; resharding it for this run', self.directory,
                   step, ', '.join(f'{k}={old} (now {new})' for k, (old, new) in changed.items()))

  def wait(self) -> None:
    self.manager.wait_until_finished()
    if self.best_manager is not None:
      self.best_manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
    if self.best_manager is not None:
      self.best_manager.close()


def load_best_params(workdir: str, abstract_params: PyTree | None = None) -> PyTree:
  """The parameters of the best evaluation saved under DIR/best."""
  manager = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, 'best')),
                                  item_names=('params',),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise UserError(f'no best checkpoint under {workdir}/best; set config.train.best_metric')
  args = ocp.args.StandardRestore(abstract_params) if abstract_params is not None else ocp.args.StandardRestore()
  return manager.restore(step, args=ocp.args.Composite(params=args))['params']
