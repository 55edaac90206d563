"""The key/value cache: static length, one buffer per layer, written with dynamic_update_slice."""

import flax.struct
import jax
import jax.numpy as jnp

from deepalign.errors import UserError
from deepalign.models.config import ModelConfig
from deepalign.models.sharding import CACHE, constrain


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for the slots written so far.

  keys, values: one array per layer, [B, K, S, hd] (rope already applied to keys); for a
    `scan_layers` model one stacked array [L, B, K, S, hd] each (the scan reads and writes
    layer l at [l]; `keys[l]` and `len(keys)` mean the same in both layouts).
  valid: [B, S] bool, slot s holds a real (non-padding) token.
  index: [] int32, the next slot to write; every row writes the same slots (left padding).
  """
  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  valid: jax.Array
  index: jax.Array

  @property
  def max_len(self) -> int:
    return self.valid.shape[1]

  @property
  def batch_size(self) -> int:
    return self.valid.shape[0]

  def take_rows(self, rows: jax.Array) -> 'KVCache':
    """The cache of rows `rows` [N] (indices into this cache's batch; repeats allowed)."""
    axis = 1 if _stacked(self.keys) else 0
    take = lambda x: jnp.take(x, rows, axis=axis)
    keys = take(self.keys) if _stacked(self.keys) else tuple(take(k) for k in self.keys)
    values = take(self.values) if _stacked(self.values) else tuple(take(v) for v in self.values)
    return KVCache(keys=keys, values=values, valid=jnp.take(self.valid, rows, axis=0),
                   index=self.index)

  def grown(self, length: int) -> 'KVCache':
    """The cache with `length` >= max_len slots: the new ones empty (not valid)."""
    extra = length - self.max_len
    if extra < 0:
      raise ValueError(f'KVCache.grown({length}): the cache already has {self.max_len} slots')
    if extra == 0:
      return self
    pad = lambda x: jnp.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, extra), (0, 0)])
    grow = lambda b: pad(b) if _stacked(b) else tuple(pad(x) for x in b)
    return KVCache(keys=grow(self.keys), values=grow(self.values),
                   valid=jnp.pad(self.valid, ((0, 0), (0, extra))), index=self.index)

  def num_tokens(self) -> jax.Array:
    """[B] int32: real tokens written per row (the next token's position by default)."""
    return jnp.sum(self.valid, axis=1, dtype=jnp.int32)


def _stacked(buffers) -> bool:
  """A scan_layers cache holds one [L, B, K, S, hd] array, not a tuple of per-layer arrays."""
  return not isinstance(buffers, (tuple, list))


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache for `batch` rows and `max_len` slots (dtype: default the compute dtype).

  Writing more than `max_len` slots is not detected inside jit (dynamic_update_slice clamps);
  size it as prompt length + new tokens.
  """
  if batch < 1 or max_len < 1:
    raise UserError(f'init_cache(batch={batch}, max_len={max_len}): both must be >= 1.')
  dtype = config.compute_dtype if dtype is None else jnp.dtype(dtype)
  shape = (batch, config.num_kv_heads, max_len, config.head_dim)
  if config.scan_layers:
    # Sharded over batch and KV heads from the start (no-op without a mesh).
    stacked = lambda: constrain(jnp.zeros((config.num_layers,) + shape, dtype), ('layers',) + CACHE)
    keys, values = stacked(), stacked()
  else:
    keys = tuple(constrain(jnp.zeros(shape, dtype), CACHE) for _ in range(config.num_layers))
    values = tuple(constrain(jnp.zeros(shape, dtype), CACHE) for _ in range(config.num_layers))
  return KVCache(keys=keys, values=values, valid=jnp.zeros((batch, max_len), bool),
                 index=jnp.zeros((), jnp.int32))
