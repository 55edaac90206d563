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

from deepalign.models import read_positions
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
                  groups: np.ndarray, read: read_positions.Read = None) -> jax.Array:
  """[N, R, D] final hidden states (as `Transformer.hidden_states`) of rows [N, T] whose
  first `prefix_len` columns are equal within each group of `groups` (static ids [N]), at the
  positions of `read` (`read_positions`; None: all T)."""
  n, t = tokens.shape
  if not 0 < prefix_len < t:
    raise ValueError(f'shared_prefix.hidden_states: prefix_len={prefix_len} must be in 1..{t - 1}')
  first, source = group_layout(groups)
  if source.shape != (n,):
    raise ValueError(f'shared_prefix.hidden_states: {source.shape[0]} group ids for {n} rows')
  head_read, tail_read, parts = _split_read(read, prefix_len, t)
  variables = {'params': params}
  pre = lambda x: None if x is None else x[first, :prefix_len]
  rest = lambda x: None if x is None else x[:, prefix_len:]
  mask = attention_mask.astype(jnp.int32)
  # A cache of exactly the prefix's slots (the prefix's write covers it: no buffer copy), and
  # the rest appended to it: no preallocated slots to write into, or to copy under autodiff.
  cache = init_cache(model.config, len(first), prefix_len)
  head, cache = model.apply(variables, pre(tokens), pre(mask), pre(positions), cache=cache,
                            read=head_read, method=Transformer.hidden_states)
  cache = cache.take_rows(jnp.asarray(source))
  tail, _ = model.apply(variables, rest(tokens), rest(mask), rest(positions), cache=cache,
                        append=True, read=tail_read, method=Transformer.hidden_states)
  head = head[source]
  if parts is not None:
    chosen = [x for x, keep in zip((head, tail), parts) if keep]
    return jnp.concatenate(chosen, axis=1) if len(chosen) > 1 else chosen[0]
  # Per-row positions: each from the prefix's states or the rest's.
  in_head = read_positions.take(head, jnp.minimum(read, prefix_len - 1))
  return jnp.where((read < prefix_len)[..., None], in_head, tail)


def _split_read(read: read_positions.Read, prefix_len: int, length: int
                ) -> tuple[read_positions.Read, read_positions.Read, tuple[bool, bool] | None]:
  """(the prefix call's read, the rest's read, which of the two outputs make up the result:
  None for per-row positions) for `read` of the whole rows.

  A slice splits in two; a call whose part it misses still runs (the prefix for its keys and
  values, the rest because the prefix's are all there is otherwise) and reads one position,
  left out. Per-row positions read the prefix in full and the rest at the positions past it
  (clipped: `hidden_states` picks per row).
  """
  if read is None:
    return None, None, (True, True)
  if isinstance(read, slice):
    start, stop, step = read.indices(length)
    if step != 1 or start >= stop:
      raise ValueError(f'shared_prefix.hidden_states: read must be a non-empty slice of step 1, '
                       f'got {read}')
    parts = (start < prefix_len, stop > prefix_len)
    head = slice(start, min(stop, prefix_len)) if parts[0] else slice(prefix_len - 1, prefix_len)
    tail = slice(max(start, prefix_len) - prefix_len, stop - prefix_len) if parts[1] else slice(0, 1)
    return head, tail, parts
  return None, jnp.clip(read - prefix_len, 0, length - prefix_len - 1), None


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
