"""Activation sharding by logical axis names (the MaxText way), a no-op without a mesh.

    x = constrain(x, ('batch', 'length', 'embed'))

inside the model pins an activation to the layout the parallel rules give those names on the
mesh of `jax.set_mesh(mesh)` (batch over data x fsdp, heads / mlp / vocab over tensor by
`parallel.DEFAULT_RULES`). Without these constraints XLA propagates the parameters' fsdp
sharding into the activations (embed-sharded, batch replicated on every chip) and the step's
temporaries grow with the global batch.

The rules are those of an `activation_rules(rules)` context (the run's `config.parallel.rules`:
`parallel.activation_sharding(mesh, rules)` enters both it and `jax.set_mesh(mesh)`), else
`DEFAULT_RULES`. Dimensions a mesh axis does not divide stay unsharded (the rules'
resolver knows shapes; flax's `with_logical_constraint` does not and would fail on, e.g., one
prompt decoding on eight chips). With no mesh in context (single-device tests, toy runs) the
array is returned untouched, so those programs are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from deepalign.parallel.activation_context import current_rules
from deepalign.parallel.rules import activation_spec

# Logical names of the model's activations (each has a rule in DEFAULT_RULES).
BLT_EMBED = ('batch', 'length', 'embed')
BLT_HEADS = ('batch', 'length', 'heads', 'kv')
BLT_KV_HEADS = ('batch', 'length', 'kv_heads', 'kv')
BLT_MLP = ('batch', 'length', 'mlp')
CACHE = ('batch', 'kv_heads', 'length', 'kv')  # KVCache buffers [B, K, S, hd]


def single_device() -> bool:
  """No context mesh, or a mesh of one device: the program runs unsharded."""
  mesh = jax.sharding.get_abstract_mesh()
  return mesh.empty or mesh.size == 1


def constrain(x: jax.Array, names: Sequence[str | None], replicate: bool = False) -> jax.Array:
  """`x` constrained to the sharding its logical axis `names` get on the context mesh.

  Untouched without a context mesh, or where the rules shard nothing (unless `replicate`:
  then an all-unsharded result pins `x` replicated, e.g. rows gathered for the LM head).
  """
  if single_device():
    return x
  mesh = jax.sharding.get_abstract_mesh()
  spec = activation_spec(tuple(names), x.shape, mesh, current_rules())
  if all(entry is None for entry in spec) and not replicate:
    # Nothing to split: an all-None constraint would force replication, not leave it free.
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def logits_names(ndim: int) -> tuple[str, ...]:
  """('head_batch', 'length'..., 'head_vocab') for logits of rank `ndim` ([B, V], [B, T, V], ...):
  vocabulary-parallel (`parallel.rules.DEFAULT_RULES`)."""
  if ndim < 2:
    return ('head_vocab',) * ndim
  return ('head_batch',) + ('length',) * (ndim - 2) + ('head_vocab',)


def head_input_names(ndim: int) -> tuple[str | None, ...]:
  """('head_batch', 'length'..., None) for the LM head's input [..., D]: the rows it sees."""
  return ('head_batch',) + ('length',) * (ndim - 2) + (None,)

