"""Final hidden states of rows that share their first S tokens, the shared part computed once.

    hidden = shared_prefix.hidden_states(model, params, tokens, mask, positions,
                                         prefix_len=32, groups=np.repeat(np.arange(4), 4))

A DPO pair's chosen and rejected rows start with the same prompt, and a GRPO group's G rollouts
too. Under causal attention the hidden states of a row's first S positions depend on its first
S tokens only, so rows that agree there have the same states and the same keys and values. Here
the first row of each group runs positions 0..S-1 once, filling a KV cache; the cache rows are
copied to every member of the group, and all rows run positions S..T-1 on top of it (the
cached path of `Transformer.hidden_states`, appending to the cache). The result is the full
forward's, to float32 rounding, and so are the gradients (they reach the prefix through the shared keys and
values); the work of the prefix is done once per group instead of once per row (W-tiny DPO: a
third of each row, half of it saved).

The caller guarantees what `groups` claims: rows of one group have the same tokens, mask and
positions over the first S columns, and every row is one sequence (0/1 mask, no packing: the
cached path knows no segment ids). `common_prefix_len` checks a host batch for it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.models.kv_cache import init_cache
from deepalign.models.transformer import Transformer

PyTree = Any


def group_layout(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(first row of each group [U], each row's group index [N]) of static group ids [N]."""
  groups = np.asarray(groups)
  ids, first, index = np.unique(groups, return_index=True, return_inverse=True)
  del ids
  return first.astype(np.int32), index.reshape(-1).astype(np.int32)


def hidden_states(model: Transformer, params: PyTree, tokens: jax.Array,
                  attention_mask: jax.Array, positions: jax.Array | None, prefix_len: int,
                  groups: np.ndarray) -> jax.Array:
  """[N, T, D] final hidden states (as `Transformer.hidden_states`) of rows [N, T] whose
  first `prefix_len` columns are equal within each group of `groups` (static ids [N])."""
  n, t = tokens.shape
  if not 0 < prefix_len < t:
    raise ValueError(f'shared_prefix.hidden_states: prefix_len={prefix_len} must be in 1..{t - 1}')
  first, source = group_layout(groups)
  if source.shape != (n,):
    raise ValueError(f'shared_prefix.hidden_states: {source.shape[0]} group ids for {n} rows')
  variables = {'params': params}
  pre = lambda x: None if x is None else x[first, :prefix_len]
  rest = lambda x: None if x is None else x[:, prefix_len:]
  mask = attention_mask.astype(jnp.int32)
  # A cache of exactly the prefix's slots (the prefix's write covers it: no buffer copy), and
  # the rest appended to it: no preallocated slots to write into, or to copy under autodiff.
  cache = init_cache(model.config, len(first), prefix_len)
  head, cache = model.apply(variables, pre(tokens), pre(mask), pre(positions), cache=cache,
                            method=Transformer.hidden_states)
  cache = cache.take_rows(jnp.asarray(source))
  tail, _ = model.apply(variables, rest(tokens), rest(mask), rest(positions), cache=cache,
                        append=True, method=Transformer.hidden_states)
  return jnp.concatenate([head[source], tail], axis=1)


def common_prefix_len(groups: np.ndarray, *columns: np.ndarray) -> int:
  """The largest S such that every group's rows agree on the first S entries of every array of
  `columns` ([N, T] each, host numpy): how far a batch may share (0 if not at all)."""
  first, source = group_layout(groups)
  t = columns[0].shape[1]
  agree = np.ones(columns[0].shape, bool)
  for col in columns:
    col = np.asarray(col)
    agree &= col == col[first][source]
  differs = ~agree.all(axis=0)  # [T]: some row leaves its group's first row at this column
  return int(np.argmax(differs)) if differs.any() else t
