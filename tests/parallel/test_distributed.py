"""Multi-host: `initialize_distributed` gating, and a real 2-process x 4-device CPU job."""

from __future__ import annotations


import pytest

from deepalign.parallel import get_config, initialize_distributed


WORKER = """
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding
from deepalign import parallel
pid, port = int(sys.argv[1]), sys.argv[2]
cfg = parallel.get_config().distributed
cfg.enabled, cfg.coordinator_address, cfg.num_processes, cfg.process_id = True, f'localhost:{port}', 2, pid
cfg.initialization_timeout = 120
assert parallel.initialize_distributed(cfg)
assert parallel.initialize_distributed(cfg)  # a second call is harmless
assert (jax.process_count(), jax.device_count(), jax.local_device_count()) == (2, 8, 4)
data = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
expected = float(np.sum(data * np.arange(16.0)[:, None]))
for shape, rows in [({'data': 8}, slice(8 * pid, 8 * pid + 8)), ({'data': 2, 'tensor': 4}, slice(8 * pid, 8 * pid + 8)),
                    ({'tensor': 8}, slice(0, 16))]:
  mesh = parallel.make_mesh(shape)
  assert parallel.host_batch_slice(16, mesh) == rows, (shape, parallel.host_batch_slice(16, mesh))
  batch = parallel.shard_batch({'x': data[rows]}, mesh)
  assert batch['x'].shape == (16, 3)
  # Row-weighted sum: right only if every host's rows landed at their global positions.
  f = jax.jit(lambda x: jnp.sum(x * jnp.arange(16.0)[:, None]), out_shardings=NamedSharding(mesh, jax.P()))
  assert float(f(batch['x'])) == expected, (shape, float(f(batch['x'])), expected)
print('ok', pid)
"""


def test_disabled_is_a_no_op() -> None:
  assert initialize_distributed(None) is False
  assert initialize_distributed({'enabled': False, 'coordinator_address': 'nowhere:1'}) is False
  assert initialize_distributed(get_config().distributed) is False


def test_incomplete_settings_are_user_error(run8) -> None:
  out = run8("""
      import pytest
      from deepalign.errors import UserError
      from deepalign.parallel import initialize_distributed
      with pytest.raises(UserError, match='Number of processes must be defined.*num_processes'):
        initialize_distributed({'enabled': True, 'coordinator_address': 'localhost:1234'})
      print('ok')
  """, devices=1)
  assert out.strip() == 'ok'


@pytest.mark.slow
def test_two_processes_share_one_mesh(run_processes) -> None:
  run_processes(WORKER)