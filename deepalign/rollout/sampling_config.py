"""`SamplingConfig`: how `generate` picks tokens (hashable: a static jit argument)."""

import dataclasses
import functools
import operator

import jax
import jax.numpy as jnp

from deepalign.errors import UserError


def _eos_tuple(eos_id) -> tuple[int, ...]:
  """`eos_id` (one id or several) as a non-empty tuple of ints, or a UserError."""
  ids = tuple(eos_id) if isinstance(eos_id, (tuple, list)) else (eos_id,)
  try:
    ids = tuple(dict.fromkeys(operator.index(i) for i in ids))
  except TypeError:
    ids = ()
  if not ids or any(i < 0 for i in ids):
    raise UserError(f'SamplingConfig.eos_id={eos_id!r} must be a token id or a tuple of ids >= 0 '
                    "(every id that ends a response: the tokenizer's eos_ids).")
  return ids


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """max_new_tokens N; temperature > 0; top_k (0 = off); top_p in (0, 1] (1 = off);
  greedy (argmax; log-probs still use `temperature`); eos_id: one id or a tuple of ids, any
  of which ends a response (Llama-3-Instruct's <|eot_id|>, Gemma-it's <end_of_turn>: pass the
  tokenizer's `eos_ids`), stored as a tuple; pad_id; stop_at_eos (False: exactly N tokens per
  row, EOS is an ordinary token); fuse_projections (on one device, decode with q|k|v and
  gate|up each as one matmul, `models.fused_projections`: the same tokens, a faster step, and a
  second copy of those kernels while `generate` runs; False where that memory is short)."""
  max_new_tokens: int = 64
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  eos_id: int | tuple[int, ...] = 2
  pad_id: int = 0
  stop_at_eos: bool = True
  fuse_projections: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'eos_id', _eos_tuple(self.eos_id))  # the one place it is normalized
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      raise UserError(f'SamplingConfig.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1.')
    if not self.temperature > 0:
      raise UserError(f'SamplingConfig.temperature={self.temperature!r} must be > 0 '
                      '(use greedy=True for argmax decoding).')
    if not isinstance(self.top_k, int) or self.top_k < 0:
      raise UserError(f'SamplingConfig.top_k={self.top_k!r} must be an integer >= 0 (0 = off).')
    if not 0 < self.top_p <= 1:
      raise UserError(f'SamplingConfig.top_p={self.top_p!r} must be in (0, 1] (1 = off).')

  @property
  def filters(self) -> dict:
    """top_k / top_p as keyword arguments of `rollout.logprobs`: with them, every log-prob and
    entropy is of the distribution the sampler draws from."""
    return {'top_k': self.top_k, 'top_p': self.top_p}

  @property
  def filtered(self) -> bool:
    """top-k or top-p truncates the distribution (the policy is the filtered one)."""
    return self.top_k > 0 or self.top_p < 1

  def is_eos(self, tokens: jax.Array) -> jax.Array:
    """bool, shape of `tokens`: the token is one of the EOS ids."""
    return functools.reduce(jnp.logical_or, [tokens == i for i in self.eos_id])
