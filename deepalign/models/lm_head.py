"""The LM head as a pure function: logits = softcap(hidden @ kernel), computed in float32.

    kernel = lm_head.head_kernel(params, config)            # [D, V]
    logits = lm_head.lm_logits(hidden, kernel, config)      # [..., V] float32

`Transformer.logits` is this function on its own parameters; a caller that must not hold the
full [rows, tokens, V] logits (chunked log-probs) calls it on one chunk of hidden states at a
time, inside a `lax.scan`, with the same kernel.

Why float32 even for a bfloat16 model: the soft cap (Gemma-2: 30 tanh(z / 30)) squeezes the
logits towards +-30, where bfloat16's spacing is 0.125; every log-prob ratio and KL would carry
that rounding. bfloat16 inputs and weights are exactly representable in float32, so the upcast
costs one [D, V] float32 copy of the kernel (per chunk under remat) and nothing in accuracy.
For a float32 model it is the same dot_general the flax layers ran (bit-identical logits).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from deepalign.models import dense_dot
from deepalign.models.config import ModelConfig
from deepalign.models.sharding import constrain, head_input_names, logits_names


def head_kernel(params: Mapping[str, Any], config: ModelConfig) -> jax.Array:
  """The [D, V] LM-head kernel of a `Transformer`'s params: the embedding transposed when tied.

  `params` is the model's params tree (the one under 'params'); only the embedding (tied) or
  'lm_head' (untied) is read.
  """
  if config.head != 'lm':
    raise ValueError(f'head_kernel: the model has head={config.head!r}, not an LM head.')
  if config.tie_word_embeddings:
    return params['embed']['embedding'].T
  return params['lm_head']['kernel']


def soft_cap(logits: jax.Array, cap: float | None) -> jax.Array:
  """cap * tanh(logits / cap) (Gemma-2's final-logit soft cap), or `logits` when cap is None."""
  if cap is None:
    return logits
  return cap * jnp.tanh(logits / cap)


def lm_logits(hidden: jax.Array, kernel: jax.Array, config: ModelConfig,
              dtype: Any = jnp.float32) -> jax.Array:
  """Logits [..., V] in `dtype` from final hidden states [..., D] and the kernel [D, V].

  The matmul (float32 accumulation) and the soft cap run in `dtype` (float32 by default,
  whatever `config.dtype` is). Pure: no module, no parameters of its own. Under a context
  mesh it is vocabulary-parallel (rules 'head_batch', 'head_vocab'): the rows gathered over
  fsdp, the kernel, its gradient and the logits split over the vocabulary.
  """
  dtype = jnp.dtype(dtype)
  if hidden.ndim >= 2:
    hidden = constrain(hidden, head_input_names(hidden.ndim), replicate=True)
  kernel = constrain(kernel, (None, 'head_vocab'))
  hidden, kernel = hidden.astype(dtype), kernel.astype(dtype)
  # The contraction nn.Dense writes, so the float32 path is bit-identical to the old layer.
  out = dense_dot.dot_general(hidden, kernel, (((hidden.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32).astype(dtype)
  return constrain(soft_cap(out, config.final_logit_softcap), logits_names(out.ndim))
