"""save_pretrained of params sharded across hosts (fsdp x tensor over 2 processes x 2 devices):
every process takes part in the per-tensor gathers, only process 0 writes, and the files equal a
single-process export of the same params byte for byte."""

import jax
import numpy as np

from deepalign import models

WORKER = """
import os, sys
import jax, numpy as np
from deepalign import models, parallel
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=pid,
                           initialization_timeout=120)
assert (jax.process_count(), jax.device_count()) == (2, 4)
model = models.Transformer(models.ModelConfig(**{CFG}))
mesh = parallel.make_mesh({'data': 1, 'fsdp': 2, 'tensor': 2})
shardings = models.hf_checkpoint.model_shardings(model, mesh)
params = jax.device_put(models.init_params(model, jax.random.PRNGKey(0)), shardings)
split = [x for x in jax.tree.leaves(params) if not x.is_fully_addressable]
assert split, 'no parameter is sharded across the two hosts: the test would test nothing'
for limit in ('5GB', '4KB'):  # one file; shards + index
  written = models.save_pretrained(model, params, os.path.join(out, limit), max_shard_size=limit)
  assert (written != []) == (pid == 0), written  # only process 0 writes
print('ok', pid)
"""

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
           num_kv_heads=2, head_dim=8)


def test_fsdp_tensor_sharded_export_across_hosts_equals_one_process(run_processes, tmp_path) -> None:
  run_processes(WORKER.replace('{CFG}', repr(CFG)), str(tmp_path / 'two'), devices_per_process=2,
                timeout=240)
  model = models.Transformer(models.ModelConfig(**CFG))
  params = jax.tree.map(np.asarray, models.init_params(model, jax.random.PRNGKey(0)))
  for limit in ('5GB', '4KB'):
    one, two = tmp_path / 'one' / limit, tmp_path / 'two' / limit
    written = models.save_pretrained(model, params, one, max_shard_size=limit)
    assert sorted(p.name for p in two.iterdir()) == sorted(written)
    for name in written:
      assert (two / name).read_bytes() == (one / name).read_bytes(), (limit, name)
