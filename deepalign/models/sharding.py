"""Activation sharding by logical axis names (the MaxText way), a no-op without a mesh.

    x = constrain(x, ('batch', 'length', 'embed'))

inside the model pins an activation to the layout the parallel rules give those names on the
mesh of `jax.set_mesh(mesh)` (batch over data x fsdp, heads / mlp / vocab over tensor by
`parallel.DEFAULT_RULES`). Without these constraints XLA propagates the parameters' fsdp
sharding into the activations (embed-sharded, batch replicated on every chip) and the step's
temporaries grow with the global batch.

The rules are flax's `nn.logical_axis_rules(rules)` context when one is active (the run's
`config.parallel.rules`: wrap tracing in `with jax.set_mesh(mesh), nn.logical_axis_rules(rules):`),
else `DEFAULT_RULES`. Dimensions a mesh axis does not divide stay unsharded (the rules'
resolver knows shapes; flax's `with_logical_constraint` does not and would fail on, e.g., one
prompt decoding on eight chips). With no mesh in context (single-device tests, toy runs) the
array is returned untouched, so those programs are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
from deepalign.parallel.rules import DEFAULT_RULES, activation_spec

# Logical names of the model's activations (each has a rule in DEFAULT_RULES).
BLT_EMBED = ('batch', 'length', 'embed')
BLT_HEADS = ('batch', 'length', 'heads', 'kv')
BLT_KV_HEADS = ('batch', 'length', 'kv_heads', 'kv')
BLT_MLP = ('batch', 'length', 'mlp')
CACHE = ('batch', 'kv_heads', 'length', 'kv')  # KVCache buffers [B, K, S, hd]


def current_rules():
  """The active `nn.logical_axis_rules` context's rules, else `DEFAULT_RULES`."""
  return tuple(nn.get_logical_axis_rules()) or DEFAULT_RULES


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """`x` constrained to the sharding its logical axis `names` get on the context mesh.

  Untouched without a context mesh, or where the rules shard nothing.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  spec = activation_spec(tuple(names), x.shape, mesh, current_rules())
  if all(entry is None for entry in spec):
    # Nothing to split: an all-None constraint would force replication, not leave it free.
    return x
  return jax.lax.with_sharding_constraint(x, spec)


def logits_names(ndim: int) -> tuple[str, ...]:
  """('batch', 'length'..., 'vocab') for logits of rank `ndim` ([B, V], [B, T, V], ...)."""
  if ndim < 2:
    return ('vocab',) * ndim
  return ('batch',) + ('length',) * (ndim - 2) + ('vocab',)

