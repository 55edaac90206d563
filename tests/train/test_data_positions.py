"""Each process's data iterator position is saved with a checkpoint and restored to that process.

Every process reads its own shard through its own grain iterator, and with packing or dropped rows
their positions differ. Before each process's state was saved, the checkpoint held only the state
orbax wrote from process 0, and on resume every process took it: the 2-process test below, run
against that code, failed with process 1 restoring {'next_index': 10, 'skipped': ''} (process 0's)
instead of its own {'next_index': 11, 'skipped': 'xx...'}.
"""

import json
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
import pytest

from deepalign.errors import UserError
from deepalign.train.checkpointing import Checkpointer
from deepalign.train.state import TrainState

LAYOUT = {'global_batch_size': 8, 'process_count': 1, 'device_count': 1}


def _state(step: int) -> TrainState:
  return TrainState(params={'w': jnp.arange(4.0)}, opt_state=(), step=jnp.array(step, jnp.int32),
                    rng=jnp.zeros(2, jnp.uint32))


def _saved_data(tmp_path, step: int) -> dict:
  manager = ocp.CheckpointManager(os.path.abspath(tmp_path / 'checkpoints'), item_names=('state', 'data'),
                                  options=ocp.CheckpointManagerOptions(read_only=True))
  try:
    return manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data']
  finally:
    manager.close()


@pytest.mark.parametrize('data_state', [{'next_index': 12, 'parts': {'a': [1, 2]}}, b'{"next_index": 7}'],
                         ids=['dict', 'bytes'])
def test_round_trip_one_process(tmp_path, data_state):
  saver = Checkpointer(str(tmp_path), async_save=False, layout=LAYOUT)
  saver.save(_state(3), data_state)
  saver.close()
  saved = _saved_data(tmp_path, 3)
  assert len(saved['processes']) == 1 and saved['layout'] == LAYOUT
  restorer = Checkpointer(str(tmp_path), layout=LAYOUT)
  restored, restored_data = restorer.restore(jax.eval_shape(lambda: _state(3)))
  restorer.close()
  assert int(restored.step) == 3 and restored_data == data_state


@pytest.mark.parametrize('old', [{'json': {'next_index': 5}}, {'bytes': 'eyJuZXh0X2luZGV4IjogNX0='}],
                         ids=['json', 'bytes'])
@pytest.mark.parametrize('with_layout', [True, False])
def test_checkpoint_written_before_per_process_states_restores(tmp_path, old, with_layout):
  """Older checkpoints hold one data state at the top level of the 'data' item, for every process."""
  saver = Checkpointer(str(tmp_path), async_save=False)
  item = {**old, 'layout': LAYOUT} if with_layout else dict(old)
  saver.manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(3)),
                                                data=ocp.args.JsonSave(item)))
  saver.close()
  restorer = Checkpointer(str(tmp_path), layout=LAYOUT)
  restored, data_state = restorer.restore(jax.eval_shape(lambda: _state(3)))
  restorer.close()
  assert int(restored.step) == 3
  assert data_state == ({'next_index': 5} if 'json' in old else b'{"next_index": 5}')


def test_positions_of_another_process_count_are_refused(tmp_path):
  """Without a recorded layout (nothing to check it against), the list of positions still says how
  many processes wrote it."""
  saver = Checkpointer(str(tmp_path), async_save=False)
  item = {'processes': [{'json': {'next_index': 10}}, {'json': {'next_index': 11}}]}
  saver.manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(_state(3)),
                                                data=ocp.args.JsonSave(item)))
  saver.close()
  restorer = Checkpointer(str(tmp_path))
  with pytest.raises(UserError, match='data positions of 2 processes and this run has 1'):
    restorer.restore(jax.eval_shape(lambda: _state(3)))
  restorer.close()


WORKER = """
import sys
import jax, jax.numpy as jnp, numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P
from deepalign import parallel
from deepalign.train.checkpointing import Checkpointer
from deepalign.train.state import TrainState
pid, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
cfg = parallel.get_config().distributed
cfg.enabled, cfg.coordinator_address, cfg.num_processes, cfg.process_id = True, f'localhost:{port}', 2, pid
cfg.initialization_timeout = 120
assert parallel.initialize_distributed(cfg)
assert (jax.process_count(), jax.process_index()) == (2, pid)
replicated = NamedSharding(jax.sharding.Mesh(np.array(jax.devices()), ('data',)), P())
def state(step):
  return jax.device_put(TrainState(params={'w': np.arange(4.0, dtype=np.float32)}, opt_state=(),
                                   step=np.array(step, np.int32), rng=np.zeros(2, np.uint32)), replicated)
layout = {'global_batch_size': 8, 'process_count': 2, 'device_count': 8}
# Different positions, of different lengths (process 1's is longer, so the gather pads).
mine = {3: {'next_index': 10 + pid, 'skipped': 'x' * (50 * pid)}, 4: f'{{"next_index": {20 + pid}}}'.encode()}
saver = Checkpointer(workdir, async_save=False, layout=layout)
for step, data_state in mine.items():
  saver.save(state(step), data_state)
saver.close()
abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state(0))
restorer = Checkpointer(workdir, layout=layout)
got = {step: restorer.restore(abstract, step) for step in mine}
saved = restorer.manager.restore(3, args=ocp.args.Composite(data=ocp.args.JsonRestore()))['data']
restorer.close()
# Checked only after the last collective call: a process failing inside one would hang the other.
for step, data_state in mine.items():
  assert int(got[step][0].step) == step
  assert got[step][1] == data_state, (pid, step, got[step][1], data_state)
assert saved.get('processes') == [{'json': {'next_index': 10, 'skipped': ''}},
                                  {'json': {'next_index': 11, 'skipped': 'x' * 50}}], saved
assert saved['layout'] == layout
print('ok', pid)
"""


def test_two_processes_restore_their_own_positions(tmp_path, run_processes):
  run_processes(WORKER, str(tmp_path), timeout=180)
  with open(tmp_path / 'checkpoints' / '3' / 'data' / 'metadata') as f:
    assert json.load(f)['processes'][1]['json']['next_index'] == 11
