"""Chosen and rejected rows of a preference batch stacked into one [2B, T] forward, and the
check that lets that forward run their shared prompt once (`models.shared_prefix`)."""

from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.models import shared_prefix

KEYS = ('tokens', 'loss_mask', 'attention_mask', 'positions', 'segment_ids')
# Batch entry [B, S] int8 (zeros): every pair of the batch shares its first S columns (S = 0:
# not known to share). Its width, a shape, is static under jit: the DPO step compiles once per
# width that occurs (`WithSharedPrefix` gives two, 0 and `dpo.shared_prefix_len`).
SHARED_PREFIX = 'shared_prefix'


def stack(batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
  """{key: concat(chosen_key, rejected_key)} [2B, T]: rows 0..B-1 chosen, B..2B-1 rejected."""
  return {k: jnp.concatenate([batch[f'chosen_{k}'], batch[f'rejected_{k}']])
          for k in KEYS if f'chosen_{k}' in batch}


def split(values: jax.Array) -> tuple[jax.Array, jax.Array]:
  """[2B, ...] -> (chosen [B, ...], rejected [B, ...])."""
  half = values.shape[0] // 2
  return values[:half], values[half:]


def groups(pairs: int) -> np.ndarray:
  """Group ids [2B] of the stacked rows: chosen row i and rejected row i form group i."""
  return np.concatenate([np.arange(pairs), np.arange(pairs)])


def shares_prefix(batch: Mapping[str, Any], prefix_len: int) -> bool:
  """Whether a host batch's pairs agree on their first `prefix_len` columns (tokens, mask,
  segment ids, positions), hold one sequence per row (no packing) and have no loss target
  there: then `sequence_logprobs.shared_target_logprobs` gives the full forward's numbers."""
  rows = {k: np.concatenate([np.asarray(batch[f'chosen_{k}']), np.asarray(batch[f'rejected_{k}'])])
          for k in KEYS if f'chosen_{k}' in batch}
  mask = rows.get('segment_ids', rows['attention_mask'])
  if prefix_len <= 0 or prefix_len >= rows['tokens'].shape[1] or mask.max(initial=0) > 1:
    return False
  if rows['loss_mask'][:, :prefix_len].any():
    return False
  columns = [rows[k] for k in ('tokens', 'attention_mask', 'segment_ids', 'positions') if k in rows]
  return shared_prefix.common_prefix_len(groups(rows['tokens'].shape[0] // 2), *columns) >= prefix_len


def shared_prefix_width(batch: Mapping[str, Any]) -> int:
  """S of a batch's `shared_prefix` entry (0 without one): static, a shape."""
  return int(batch[SHARED_PREFIX].shape[1]) if SHARED_PREFIX in batch else 0


def mark_shared_prefix(batch: Mapping[str, Any], prefix_len: int) -> dict[str, Any]:
  """The host batch with its `shared_prefix` entry: width `prefix_len` where
  `shares_prefix(batch, prefix_len)`, else 0."""
  pairs = np.asarray(batch['chosen_tokens']).shape[0]
  width = prefix_len if shares_prefix(batch, prefix_len) else 0
  return {**batch, SHARED_PREFIX: np.zeros((pairs, width), np.int8)}


class WithSharedPrefix:
  """`mark_shared_prefix` on each batch of `iterator`; resumable like it."""

  def __init__(self, iterator: Iterator[dict], prefix_len: int):
    self.iterator, self.prefix_len = iterator, prefix_len

  def __iter__(self) -> 'WithSharedPrefix':
    return self

  def __next__(self) -> dict[str, Any]:
    return mark_shared_prefix(next(self.iterator), self.prefix_len)

  def get_state(self):
    return self.iterator.get_state()

  def set_state(self, state) -> None:
    self.iterator.set_state(state)
