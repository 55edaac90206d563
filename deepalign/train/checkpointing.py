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

Nothing a kill, a full disk or a damaged file leaves behind stops a run: orbax writes each save
to a temporary directory and renames it when complete (a killed save leaves only the temporary,
removed at the next start); `restore_latest` names a checkpoint it cannot read (missing,
truncated or corrupted files) in a warning, moves it aside to DIR/unreadable_checkpoints/ and
uses the newest readable one; a checkpoint that reads but holds another state tree (another
model or optimizer) is a UserError listing the differing arrays. A save that fails for the disk
(ENOSPC, EIO, ...) raises `CheckpointWriteError` naming the path and the free space; the
previous checkpoint is untouched (orbax deletes old ones only after a save is committed).
"""

import base64
import errno
import json
import os
import shutil
import time
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from deepalign.errors import UserError
from deepalign.train import paths
from deepalign.train.state import TrainState

PyTree = Any

# The errors of a disk that cannot take a save: reported as a CheckpointWriteError.
_DISK_ERRNOS = (errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EROFS, errno.EFBIG)
_DISK_MESSAGES = ('No space left', 'Input/output error', 'Disk quota', 'Read-only file system',
                  'File too large')


class CheckpointWriteError(UserError):
  """A save failed because of the disk (full, failing, read-only); the previous one is intact."""


class _Unreadable(Exception):
  """A checkpoint whose files cannot be read (internal: restore_latest skips it)."""


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
    self.directory = paths.absolute(paths.join(workdir, 'checkpoints'))
    self.manager = ocp.CheckpointManager(
        self.directory,
        # handlers named up front, so item_metadata reads a checkpoint before any restore
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save))
    self.best_metric = best_metric
    self.best_manager = None
    if best_metric:
      self.best_manager = ocp.CheckpointManager(
          paths.absolute(paths.join(workdir, 'best')),
          item_names=('params',),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, cleanup_tmp_directories=True,
              best_fn=lambda metrics: metrics[best_metric], best_mode=best_mode,
              keep_checkpoints_without_metrics=False,
              enable_async_checkpointing=async_save))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, state: TrainState, data_state: Any, force: bool = False) -> None:
    """Saves `state` and this process's `data_state`; every process must call it (collective).

    Raises CheckpointWriteError when the disk refuses this save (or, asynchronously, the one
    before it)."""
    step = int(jax.device_get(state.step))
    if step in self.manager.all_steps():
      return
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(_encode_data_state(data_state, self.layout))), force=force)
    except Exception as e:  # pylint: disable=broad-except
      self._raise_if_disk(e, step)
      raise

  def save_best(self, step: int, params: PyTree, metrics: dict[str, float]) -> None:
    """Offers `params` to the best-of directory; orbax keeps it only if it is the best."""
    if self.best_manager is None:
      return
    if self.best_metric not in metrics:
      raise UserError(f"config.train.best_metric='{self.best_metric}' is not an eval metric; "
                      f"available: {', '.join(sorted(metrics))}")
    try:
      self.best_manager.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params)),
                             metrics={k: float(v) for k, v in metrics.items()}, force=True)
    except Exception as e:  # pylint: disable=broad-except
      self._raise_if_disk(e, step, self.best_manager.directory)
      raise

  def restore(self, abstract_state: TrainState, step: int | None = None
              ) -> tuple[TrainState, Any]:
    """(state, data_state) at `step` (default latest), with the shapes/shardings given.

    data_state is this process's own iterator state (the one state of an older checkpoint).
    UserError if the checkpoint is unreadable or holds another state tree."""
    step = self.latest_step() if step is None else step
    try:
      return self._restore(abstract_state, step)
    except _Unreadable as e:
      raise UserError(f'checkpoint {self.directory}/{step} cannot be read ({e}); '
                      'delete it to resume from an earlier one') from None

  def restore_latest(self, abstract_state: TrainState) -> tuple[TrainState, Any, int] | None:
    """(state, data_state, step) of the newest checkpoint that reads; None if there is none.

    An unreadable one is named in a warning and moved to DIR/unreadable_checkpoints/ (kept, not
    deleted, and out of the way of the next save of its step)."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    moved = []
    for step in steps:
      try:
        return (*self._restore(abstract_state, step), step)
      except _Unreadable as e:
        moved.append(self._set_aside(step))
        logging.warning('checkpoint %s/%d cannot be read (%s); moved it to %s and trying the one '
                        'before it', self.directory, step, e, moved[-1])
    if moved:
      raise UserError(f'no checkpoint in {self.directory} can be read (moved to '
                      f'{os.path.dirname(moved[-1])}); re-run to start from step 0, or restore '
                      'the files from a backup')
    return None

  def _restore(self, abstract_state: TrainState, step: int) -> tuple[TrainState, Any]:
    where = f'checkpoint {self.directory}/{step}'
    logging.info('restoring %s', where)
    # The data item first: it is small, and says whether this run may resume the checkpoint.
    try:
      data = self.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data']
      if not isinstance(data, Mapping):
        raise ValueError(f'the data item is a {type(data).__name__}, not a JSON object')
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(_first_line(e)) from e
    self._check_layout(step, data.get('layout', {}))
    try:
      saved = self.manager.item_metadata(step)['state']
      saved_leaves = _metadata_leaves(saved)
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(f'its state metadata: {_first_line(e)}') from e
    differences = _tree_differences(saved_leaves, abstract_state)
    if _from_before_the_guard(saved_leaves, abstract_state):
      raise UserError(
          f'{where} was written by an older deepalign, before the optimizer state held the numeric '
          'guard\'s counters (train/numeric_guard.py), and cannot be resumed by this one; start '
          'again in a fresh --workdir (or delete its checkpoints/), or finish it with the deepalign '
          'version that wrote it')
    if differences:
      raise UserError(f'{where} does not match this config: {"; ".join(differences[:6])}'
                      f'{" ..." if len(differences) > 6 else ""}; use the config it was trained '
                      'with or a fresh --workdir')
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state)))
    except Exception as e:  # pylint: disable=broad-except
      raise _Unreadable(_first_line(e)) from e
    return restored['state'], _decode_data_state(data, where)

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint `step` to DIR/unreadable_checkpoints/<step>-<time> (primary process)."""
    target = paths.join(os.fspath(paths.to_path(self.directory).parent), 'unreadable_checkpoints',
                        f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    if jax.process_index() == 0:
      if paths.is_local(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.move(os.path.join(self.directory, str(step)), target)
      else:
        _move_remote_tree(paths.to_path(self.directory) / str(step), paths.to_path(target))
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices(f'deepalign_set_aside_{step}')
    self.manager.reload()
    return target

  def _raise_if_disk(self, error: BaseException, step: int, directory: Any = None) -> None:
    """CheckpointWriteError (naming path and free space) if `error` is the disk's refusal."""
    if not _is_disk_error(error):
      return
    directory = os.fspath(directory or self.directory)
    _remove_partial_saves(directory)
    try:
      if not paths.is_local(directory):
        raise OSError('not a local disk')
      free = f'{shutil.disk_usage(directory).free / 2**20:.1f} MiB free there'
    except OSError:
      free = 'free space unknown'
    kept = [s for s in self.manager.all_steps() if s != step]
    previous = (f'the previous checkpoint {directory}/{max(kept)} is intact' if kept
                else 'no earlier checkpoint exists')
    raise CheckpointWriteError(
        f'could not write checkpoint {directory}/{step}: {_disk_reason(error)} ({free}); '
        f'{previous}; free some space (or point --workdir at a bigger disk) and re-run the same '
        'command to resume') from error

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
    """Waits for pending asynchronous saves; CheckpointWriteError if the disk refused one."""
    for manager in (self.manager, self.best_manager):
      if manager is None:
        continue
      try:
        manager.wait_until_finished()
      except Exception as e:  # pylint: disable=broad-except
        self._raise_if_disk(e, self.manager.latest_step() or 0, manager.directory)
        raise

  def close(self) -> None:
    """Closes the managers; a failed pending save is logged here (wait() raises it)."""
    for manager in (self.manager, self.best_manager):
      if manager is None:
        continue
      try:
        manager.close()
      except Exception as e:  # pylint: disable=broad-except
        if not _is_disk_error(e):
          raise
        _remove_partial_saves(os.fspath(manager.directory))
        logging.warning('a checkpoint save failed: %s', _first_line(e))


def _first_line(error: BaseException) -> str:
  lines = str(error).strip().splitlines()
  return f'{type(error).__name__}: {lines[0][:200] if lines else ""}'


def _chain(error: BaseException):
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


def _is_disk_error(error: BaseException) -> bool:
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
      return True
    if any(m in str(e) for m in _DISK_MESSAGES):
      return True
  return False


def _disk_reason(error: BaseException) -> str:
  for e in _chain(error):
    if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:
      return os.strerror(e.errno)
  return _first_line(error)


def _remove_partial_saves(directory: str) -> None:
  """Deletes the temporary directories of saves that did not complete (primary process)."""
  if jax.process_index() != 0:
    return
  if paths.is_local(directory):
    if not os.path.isdir(directory):
      return
    for name in os.listdir(directory):
      if '.orbax-checkpoint-tmp' in name:
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    return
  path = paths.to_path(directory)
  if path.is_dir():
    for child in path.iterdir():
      if '.orbax-checkpoint-tmp' in child.name:
        child.rmtree(missing_ok=True)


def _move_remote_tree(source: Any, target: Any) -> None:
  """Moves a gs:// "directory" (a name prefix) object by object: a copy of each, then the
  source deleted (an object store has no rename, and epath's wants an existing target folder)."""
  for directory, _, files in source.walk():
    for name in files:
      relative = os.path.relpath(os.fspath(directory / name), os.fspath(source))
      (target / relative).parent.mkdir(parents=True, exist_ok=True)
      (directory / name).copy(target / relative)
  source.rmtree(missing_ok=True)


def _metadata_leaves(metadata: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'params.w': (shape, dtype)} of a saved state's orbax metadata."""
  tree = getattr(metadata, 'tree', metadata)
  leaves = jax.tree_util.tree_leaves(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {leaf.name: (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for leaf in leaves}


def _key_name(key: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


# The leaves numeric_guard.GuardState added to every optimizer state (this round's change).
_GUARD_LEAVES = ('nonfinite', 'spikes', 'in_row')


def _from_before_the_guard(saved: Mapping[str, tuple], abstract: PyTree) -> bool:
  """True if this run's optimizer state has the numeric guard's counters and the saved one has
  none: a checkpoint of the deepalign before the guard (its optimizer state has another tree)."""
  names = {'.'.join(_key_name(k) for k in path)
           for path, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  is_guard = lambda name: name.startswith('opt_state.') and name.rsplit('.', 1)[-1] in _GUARD_LEAVES
  return any(is_guard(n) for n in names) and not any(is_guard(n) for n in saved)


def _tree_differences(saved: Mapping[str, tuple], abstract: PyTree) -> list[str]:
  """What differs between a saved state (its metadata leaves) and the state this run builds."""
  wanted = {'.'.join(_key_name(k) for k in path): (tuple(x.shape), str(np.dtype(x.dtype)))
            for path, x in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  out = []
  for name in sorted(set(saved) | set(wanted)):
    if name not in wanted:
      out.append(f'{name} is in the checkpoint, not in this run')
    elif name not in saved:
      out.append(f'{name} is in this run, not in the checkpoint')
    elif saved[name][0] != wanted[name][0]:
      out.append(f'{name} has shape {list(saved[name][0])} there, {list(wanted[name][0])} here')
  return out


def load_best_params(workdir: str, abstract_params: PyTree | None = None) -> PyTree:
  """The parameters of the best evaluation saved under DIR/best."""
  manager = ocp.CheckpointManager(paths.absolute(paths.join(workdir, 'best')),
                                  item_names=('params',),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  step = manager.latest_step()
  if step is None:
    raise UserError(f'no best checkpoint under {workdir}/best; set config.train.best_metric')
  args = ocp.args.StandardRestore(abstract_params) if abstract_params is not None else ocp.args.StandardRestore()
  return manager.restore(step, args=ocp.args.Composite(params=args))['params']
