"""The fused PPO + recovery step's compiled HLO holds no [rows, tokens, vocab] float32 buffer,
and no activation replicated across the batch axes.

Compiled (not run) for a 1-layer model with a vocabulary large enough to tell apart (4096) on
4 simulated devices (data 2 x fsdp 2), with `logits_chunk_size` 1 of 16 response tokens: every
log-prob path (old, reference, training and its backward) must stay at chunk-sized logits.
The same detector finds the full buffer in the unchunked log-prob function, so it can fail.

Activations: compiled as `loop.train` runs it (`parallel.with_activation_sharding`), every MLP
activation [rows, tokens, F] holds at most the rows of one batch shard; the same step traced
without the mesh context (the models' constraints inactive) replicates them, so that check can
fail too.
"""

CODE = r"""
import importlib.util, json, re
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import NamedSharding, PartitionSpec
from deepalign import parallel
from deepalign.models.config import ModelConfig
from deepalign.models.transformer import Transformer
from deepalign.rollout.chunked_logprobs import token_stats
from deepalign.train.rl import ppo_step
from deepalign.train.rl.sharding import shard_rl_state

spec = importlib.util.spec_from_file_location('rl_fixtures', 'tests/train/rl/fixtures.py')
fx = importlib.util.module_from_spec(spec); spec.loader.exec_module(fx)
V, D, N, CHUNK, F = 4096, 64, 16, 1, 96

def tiny(head):
  return Transformer(ModelConfig(vocab_size=V, hidden_size=D, num_layers=1, num_heads=2,
      intermediate_size=F, max_position_embeddings=64, head=head, pad_id=fx.ENV.pad_id,
      bos_id=fx.ENV.bos_id, eos_id=fx.ENV.eos_id))
fx.tiny, fx.HIDDEN = tiny, D

def full_vocab_buffers(hlo, rows, tokens, params=()):
  '''f32 buffers with a vocabulary axis over >= rows x tokens positions: not the [D, V] kernel
  nor any parameter's per-device shard (`params`: shapes; an fsdp-sharded embedding is [V, D/2],
  and the optimizer's update of it is as big as a one-row logits buffer).

  rows x tokens is the smallest full buffer (a minibatch's rows, sharded over every batch
  device); a chunk's buffer is below it even with all rows on one device (16 x CHUNK < 2 x N).
  '''
  found = set()
  for dims in re.findall(r'f32\[([0-9,]+)\]', hlo):
    shape = tuple(int(d) for d in dims.split(','))
    if V in shape and sorted(shape) != sorted((D, V)) and sorted(shape) not in params:
      if np.prod(shape) // V >= rows * tokens:
        found.add(shape)
  return sorted(found)

E_PROMPTS, E_REC, M, DP = 8, 8, 2, 4
batch = fx.rl_batch(fx.ENV, E_PROMPTS, E_REC)
rollout = fx.rollout_spec(sampling=fx.rollout_spec().sampling.__class__(
    max_new_tokens=N, temperature=0.7, eos_id=fx.ENV.eos_id, pad_id=fx.ENV.pad_id,
    stop_at_eos=False), logits_chunk_size=CHUNK)
config = ppo_step.PPOConfig(rollout=rollout, epochs=1, minibatches=M, entropy_coef=0.01)
models, tx, state = fx.make_state(config.kl_coef, shared_value=True)
mesh = parallel.make_mesh({'data': 2, 'fsdp': 2})
state = shard_rl_state(state, models, tx, mesh)
shardings = jax.tree.map(lambda x: x.sharding, state)
def mlp_positions(hlo, params):
  '''Per-device positions (rows x tokens) of every MLP activation [..., F] (not a kernel shard).'''
  out = set()
  for dtype, dims in re.findall(r'(f32|bf16)\[([0-9,]+)\]', hlo):
    shape = tuple(int(d) for d in dims.split(','))
    if len(shape) >= 2 and shape[-1] == F and sorted(shape) not in params:
      out.add(int(np.prod(shape[:-1])))
  return sorted(out)

step = ppo_step.make_ppo_step(models, config, tx, shardings, NamedSharding(mesh, PartitionSpec()))
sharded_batch = parallel.shard_batch(batch, mesh)
hlo = parallel.with_activation_sharding(step, mesh, parallel.DEFAULT_RULES).lower(
    state, sharded_batch).compile().as_text()
bare = step.lower(state, sharded_batch).compile().as_text()
rows = (E_PROMPTS + E_REC) // M // DP  # the fewest rows per device of any log-prob call
shards = [sorted(x.sharding.shard_shape(x.shape)) for x in jax.tree.leaves(state)]
out = {'step': full_vocab_buffers(hlo, rows, N, shards)}
L = batch['prompt_tokens'].shape[1] + N
# The most rows one device may hold: the rollout batch (16) over data x fsdp (4).
out['mlp_limit'] = (E_PROMPTS + E_REC) // DP * L
out['mlp'] = mlp_positions(hlo, shards)
out['mlp_bare'] = mlp_positions(bare, shards)

# The detector on the one-chunk path (today's full logits) of the same sizes: it must fire.
h = jnp.zeros((rows, N, D)); w = jnp.zeros((D, V)); y = jnp.zeros((rows, N), jnp.int32)
cfg = models.policy.config
grad = lambda c: jax.grad(lambda w: token_stats(h, w, y, cfg, 0.7, c, 'grad')[1].sum())
out['unchunked'] = full_vocab_buffers(jax.jit(grad(0)).lower(w).compile().as_text(), rows, N)
out['chunked'] = full_vocab_buffers(jax.jit(grad(CHUNK)).lower(w).compile().as_text(), rows, N)
print('RESULT', json.dumps(out))
"""


def test_no_full_vocab_float32_buffer_in_the_ppo_recovery_step(run8):
  import json
  out = json.loads(run8(CODE, devices=4).split('RESULT', 1)[1])
  assert out['unchunked'], 'the detector misses the full [rows, tokens, V] logits'
  assert not out['chunked'], out['chunked']
  assert not out['step'], f"full-vocabulary float32 buffers in the step: {out['step']}"
  limit = out['mlp_limit']
  assert max(out['mlp_bare']) > limit, ('the replication detector misses the unconstrained '
                                        f"step's activations: {out['mlp_bare']}")
  assert max(out['mlp']) <= limit, f"MLP activations replicated across the batch axes: {out}"
