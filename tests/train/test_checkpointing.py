"""Checkpoints that survive: an unreadable one is skipped (warned, moved aside), a true mismatch
names the arrays, a full disk is one error naming the path and the free space with the previous
checkpoint intact, and frozen models are not saved."""

import dataclasses
import errno
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import linear_regression
from deepalign.errors import UserError
from deepalign.train import checkpointing, loop
from deepalign.train import linear_regression as linreg
from deepalign.train.state import TrainState


def _config(**train):
  config = linear_regression.get_config()
  config.train.update({'num_steps': 6, 'log_every': 2, 'eval_every': 0, 'checkpoint_every': 2,
                       'async_checkpointing': False, 'max_to_keep': 3, **train})
  return config


def _train(workdir, **train):
  config = _config(**train)
  return loop.train(linreg.build_task(config, str(workdir)), config, str(workdir))


def _steps(workdir):
  return sorted(int(p) for p in os.listdir(workdir / 'checkpoints') if p.isdigit())


def _truncate_state_files(checkpoint):
  """Cuts every data file of the checkpoint's state item to half (a disk that lost writes)."""
  for root, _, files in os.walk(checkpoint / 'state'):
    for name in files:
      path = os.path.join(root, name)
      if os.path.getsize(path) > 16 and 'METADATA' not in name and name != 'commit_success.txt':
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)


def test_unreadable_checkpoints_are_skipped_and_the_newest_readable_one_used(tmp_path, caplog):
  _train(tmp_path)
  assert _steps(tmp_path) == [2, 4, 6]
  _truncate_state_files(tmp_path / 'checkpoints' / '6')                         # lost array data
  (tmp_path / 'checkpoints' / '4' / 'data' / 'metadata').write_text('{"processes": [')  # cut JSON
  with caplog.at_level(logging.INFO):
    resumed = _train(tmp_path, num_steps=8)
  assert 'checkpoints/6 cannot be read' in caplog.text and 'checkpoints/4 cannot be read' in caplog.text
  assert 'resuming at step 2' in caplog.text and 'does not match' not in caplog.text
  assert sorted(p.split('-')[0] for p in os.listdir(tmp_path / 'unreadable_checkpoints')) == ['4', '6']
  assert _steps(tmp_path) == [4, 6, 8] and int(resumed.state.step) == 8  # 4 and 6 saved anew


def test_a_checkpoint_of_another_model_names_the_differing_arrays(tmp_path):
  _train(tmp_path, num_steps=2)
  config = _config(num_steps=4)
  config.data.dim = 5
  with pytest.raises(UserError, match=r'does not match this config: .*params.w has shape \[4\] '
                                      r'there, \[5\] here'):
    loop.train(linreg.build_task(config, str(tmp_path)), config, str(tmp_path))
  assert _steps(tmp_path) == [2]


def test_a_full_disk_is_one_error_naming_the_path_and_free_space(tmp_path, monkeypatch):
  real = ocp.JsonCheckpointHandler.async_save
  calls = []

  def failing(self, directory, *args, **kwargs):
    calls.append(directory)
    if len(calls) == 2:  # the save of step 4
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return real(self, directory, *args, **kwargs)

  monkeypatch.setattr(ocp.JsonCheckpointHandler, 'async_save', failing)
  with pytest.raises(checkpointing.CheckpointWriteError) as info:
    _train(tmp_path)
  message = str(info.value)
  assert 'could not write checkpoint' in message and 'checkpoints/4' in message
  assert 'No space left on device' in message and 'MiB free' in message
  assert 'checkpoints/2 is intact' in message
  assert os.listdir(tmp_path / 'checkpoints') == ['2']  # no partial save left
  restored = ocp.StandardCheckpointer().restore(tmp_path / 'checkpoints' / '2' / 'state')
  assert int(restored['step']) == 2


class _WithFrozen(TrainState):
  frozen: dict


def test_frozen_models_are_not_checkpointed_and_come_back_on_resume(tmp_path):
  config = _config(num_steps=4)
  task = linreg.build_task(config, str(tmp_path))
  big = jnp.arange(1000.0)

  def create_state(params, tx, rng):
    base = TrainState.create(params, tx, rng)
    return _WithFrozen(frozen={'reference': big + params['b']}, **{
        f.name: getattr(base, f.name) for f in dataclasses.fields(TrainState)})

  task = dataclasses.replace(task, create_state=create_state)
  loop.train(task, config, str(tmp_path), guard=_StopAt(2))
  metadata = ocp.StandardCheckpointer().metadata(tmp_path / 'checkpoints' / '2' / 'state')
  names = [getattr(leaf, 'name', '') for leaf in jax.tree.leaves(
      getattr(metadata, 'tree', metadata), is_leaf=lambda x: hasattr(x, 'shape'))]
  assert names and not [n for n in names if n.startswith('frozen')], names
  resumed = loop.train(task, config, str(tmp_path))
  assert int(resumed.state.step) == 4
  np.testing.assert_array_equal(np.asarray(resumed.state.frozen['reference']), np.asarray(big))


class _StopAt(loop.PreemptionGuard):
  def __init__(self, at):
    super().__init__(signals=())
    self.at = at

  def should_stop(self, step):
    return step >= self.at


def test_a_checkpoint_from_before_the_numeric_guard_is_one_clear_error(tmp_path, monkeypatch):
  # The optimizer state as it was before the guard's counters (train/numeric_guard.py) joined it.
  import functools  # pylint: disable=import-outside-toplevel
  with monkeypatch.context() as m:
    m.setattr(loop, 'build_optimizer', functools.partial(loop.build_optimizer, guard=False))
    _train(tmp_path, num_steps=2)
  config = _config(num_steps=4)
  with pytest.raises(UserError, match=r'checkpoints/2 was written by an older deepalign, before the '
                                      r'optimizer state held the numeric guard.*fresh --workdir'):
    loop.train(linreg.build_task(config, str(tmp_path)), config, str(tmp_path))
  assert _steps(tmp_path) == [2]
