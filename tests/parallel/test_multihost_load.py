"""from_pretrained straight into a mesh that spans 2 processes (2 devices each, fsdp=4): each
process reads from the safetensors files only the slices its own devices hold, and every shard
equals the same slice of a single-process load."""

import jax
import numpy as np

from deepalign import models

WORKER = """
import sys
import jax, numpy as np
from deepalign import models, parallel
from deepalign.models import hf_files
pid, port, ckpt = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f'localhost:{port}', num_processes=2, process_id=pid,
                           initialization_timeout=120)
assert (jax.process_count(), jax.device_count()) == (2, 4)
read = []
original = hf_files.CheckpointFiles.read_slice
def recording(self, name, index):
  out = original(self, name, index)
  read.append(out.size)
  return out
hf_files.CheckpointFiles.read_slice = recording
mesh = parallel.make_mesh({'data': 1, 'fsdp': 4, 'tensor': 1})
_, params = models.from_pretrained(ckpt, mesh=mesh)
sharded_read = sum(read)
_, full = models.from_pretrained(ckpt)  # everything, on this host (the reference)
total = sum(x.size for x in jax.tree.leaves(full))
split = [x for x in jax.tree.leaves(params) if not x.is_fully_addressable]
assert split, 'no parameter spans both hosts: the test would test nothing'
for x, ref in zip(jax.tree.leaves(params), jax.tree.leaves(full)):
  for shard in x.addressable_shards:
    np.testing.assert_array_equal(np.asarray(shard.data), np.asarray(ref)[shard.index])
# The fsdp-sharded tensors are read half per process; only the small replicated ones (norms) whole.
assert sharded_read < 0.6 * total, (sharded_read, total)
print('ok', pid, sharded_read, total)
"""

CFG = dict(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
           num_kv_heads=2, head_dim=8)


def test_each_process_reads_only_its_slices(run_processes, tmp_path) -> None:
  model = models.Transformer(models.ModelConfig(**CFG))
  params = jax.tree.map(np.asarray, models.init_params(model, jax.random.PRNGKey(0)))
  models.save_pretrained(model, params, tmp_path / 'ckpt')
  outs = run_processes(WORKER, str(tmp_path / 'ckpt'), devices_per_process=2, timeout=240)
  for out in outs:
    read, total = (int(v) for v in out.split('ok', 1)[1].split()[1:3])
    assert 0 < read < 0.6 * total
