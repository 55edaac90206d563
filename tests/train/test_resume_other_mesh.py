"""The loop on other meshes: a run on a 2-device fsdp mesh (params sharded) ends where a 1-device run
ends; a run checkpointed on one device count / mesh resumes on another (a preempted job restarted on
a different slice) and ends where a straight run ends; a changed global batch size or process count
is refused."""

import importlib.util
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import pytest

from deepalign.errors import UserError
from deepalign.train.checkpointing import Checkpointer
from deepalign.train.state import TrainState

_spec = importlib.util.spec_from_file_location(
    'tiny_sft', pathlib.Path(__file__).with_name('tiny_sft.py'))
tiny = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny)

pytestmark = pytest.mark.slow

# A constant LR (no warmup), so 2 steps then 2 more follow the same schedule as 4 straight steps.
CONSTANT = ['--config.optimizer.schedule=constant', '--config.optimizer.warmup_steps=0',
            '--config.train.checkpoint_every=2']


def _steps(n: int) -> list[str]:
  return [*CONSTANT, f'--config.train.num_steps={n}']


@pytest.fixture(scope='module')
def straight(tmp_path_factory):
  params, log = tiny.run(tmp_path_factory.mktemp('straight'), 1, *_steps(4))
  assert "'fsdp': 1" in log and ': 0 of ' in log
  return params


@pytest.fixture(scope='module')
def two_steps_one_device(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('first') / 'run'
  tiny.run(workdir, 1, *_steps(2))
  assert (workdir / 'checkpoints' / '2' / 'state').is_dir()
  return workdir


def _resumed(workdir, from_devices: int, devices: int, *mesh: str) -> dict:
  params, log = tiny.run(workdir, devices, *_steps(4), *mesh)
  assert 'resuming at step 2 of 4' in log, log[-3000:]
  assert f'device_count={from_devices} (now {devices})' in log, log[-3000:]  # says it reshards
  return params


def test_fsdp_mesh_matches_one_device(straight, tmp_path):
  sharded, log = tiny.run(tmp_path / 'two', 2, *_steps(4), *tiny.mesh(data=1, fsdp=2))
  assert "'fsdp': 2" in log and ': 0 of ' not in log  # the embedding, kernels: split over fsdp
  tiny.assert_close(straight, sharded)


def test_two_devices_to_one(straight, tmp_path):
  tiny.run(tmp_path / 'run', 2, *_steps(2), *tiny.mesh(data=1, fsdp=2))
  tiny.assert_close(straight, _resumed(tmp_path / 'run', 2, 1))


def test_one_device_to_four(straight, two_steps_one_device, tmp_path):
  workdir = shutil.copytree(two_steps_one_device, tmp_path / 'run')
  tiny.assert_close(straight, _resumed(workdir, 1, 4, *tiny.mesh(data=2, fsdp=2)))


def test_changed_batch_size_is_refused(two_steps_one_device, tmp_path):
  workdir = shutil.copytree(two_steps_one_device, tmp_path / 'run')
  result = tiny.invoke(workdir, 1, *_steps(4), '--config.train.batch_size=16')
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'config.train.batch_size = 8 and this run has 16' in result.stderr, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr and 'resuming' not in result.stderr
  # The refused run leaves the workdir's config as the run it cannot resume was started with.
  with open(workdir / 'config.json') as f:
    assert json.load(f)['train']['batch_size'] == 8


def test_changed_process_count_is_refused(tmp_path):
  """Each process's data position is one in its shard of n processes: meaningless with another n."""
  state = TrainState(params={'w': jnp.arange(4.0)}, opt_state=(), step=jnp.array(3, jnp.int32),
                     rng=jnp.zeros(2, jnp.uint32))
  layout = {'global_batch_size': 8, 'process_count': 2, 'device_count': 8}
  saver = Checkpointer(str(tmp_path), async_save=False, layout=layout)
  saver.save(state, {'next_index': 12})
  saver.close()
  abstract = jax.eval_shape(lambda: state)
  same = Checkpointer(str(tmp_path), layout={**layout, 'device_count': 4})  # fewer devices: fine
  restored, data_state = same.restore(abstract)
  same.close()
  assert int(restored.step) == 3 and data_state == {'next_index': 12}
  other = Checkpointer(str(tmp_path), layout={**layout, 'process_count': 1})
  with pytest.raises(UserError, match=r'jax.process_count\(\)\) = 2 and this run has 1'):
    other.restore(abstract)
  other.close()
