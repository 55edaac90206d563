"""The positions of a forward whose final hidden states a caller reads (`Transformer.hidden_states`).

A caller that reads the hidden states at some positions only (the LM head at the positions that
predict a response, a score head at each row's last token) can say so: the last layer then
computes its keys and values at every position, which earlier positions' queries do not need
but the read positions attend to, and its queries, attention output, MLP and residual only at
the read positions. Each read position's numbers are the full forward's, to float32 rounding.

`read` is None (every position), a static `slice` of the T positions (the same for every row:
a cheap slice), or an int array [B, R] of per-row positions (a gather: a score head's last
token under padding).
"""

from typing import Union

import jax
import jax.numpy as jnp

Read = Union[None, slice, jax.Array]


def take(x: jax.Array, read: Read) -> jax.Array:
  """x [B, T, ...] at the positions of `read` -> [B, R, ...] (x itself when read is None)."""
  if read is None:
    return x
  if isinstance(read, slice):
    return x[:, read]
  if read.ndim != 2 or read.shape[0] != x.shape[0]:
    raise ValueError(f'read_positions.take: per-row positions must be [B, R] with B = '
                     f'{x.shape[0]}, got {read.shape}')
  index = read.reshape(read.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1, mode='clip')


def count(read: Read, length: int) -> int:
  """How many positions of a length-`length` sequence `read` selects (static)."""
  if read is None:
    return length
  if isinstance(read, slice):
    return len(range(*read.indices(length)))
  return int(read.shape[1])
