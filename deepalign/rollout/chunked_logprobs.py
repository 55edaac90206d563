"""Per-token log-probs (and entropies) from final hidden states, the LM head run chunk by chunk.

    lp, ent = token_stats(hidden, kernel, targets, model_config, temperature, chunk_size=64)

The vocabulary-sized logits of a whole batch of responses are the largest buffer of every
log-prob path: [rows, tokens, V] float32 is 2.9 GiB for 12 x 256 tokens of Gemma-2's 256k
vocabulary. Here a `lax.scan` over chunks of `chunk_size` token positions runs the LM-head
matmul (`models.lm_head.lm_logits`, float32) inside its body and keeps only the per-token
results, so at most one [rows, chunk_size, V] block is live. The body is `jax.checkpoint`ed:
the backward recomputes each chunk's logits instead of saving them, and the kernel's cotangent
accumulates over chunks in float32.

The per-chunk numbers are those of `rollout.logprobs.token_logprobs` and `token_entropy` on the
chunk's logits. With `chunk_size >= tokens` (or 0) there is one chunk and no scan: exactly the
full-logits computation, bit for bit.
"""

from typing import Any

import jax
import jax.numpy as jnp

from deepalign.models.config import ModelConfig
from deepalign.models.lm_head import lm_logits
from deepalign.rollout.logprobs import token_entropy, token_logprobs

# What the entropy output is: not computed, a value without gradient (a metric), or differentiable.
ENTROPY_MODES = ('none', 'value', 'grad')


def _chunk_stats(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, config: ModelConfig,
                 temperature: float, entropy: str, top_k: int, top_p: float
                 ) -> tuple[jax.Array, jax.Array | None]:
  """One chunk: hidden [B, C, D], targets [B, C] -> log-probs [B, C] and entropy [B, C] | None."""
  logits = lm_logits(hidden, kernel, config)
  logprobs = token_logprobs(logits, targets, temperature, top_k=top_k, top_p=top_p)
  if entropy == 'none':
    return logprobs, None
  if entropy == 'value':
    # Cut before the [B, C, V] computation: its backward is never built.
    logits = jax.lax.stop_gradient(logits)
  return logprobs, token_entropy(logits, temperature, top_k=top_k, top_p=top_p)


def token_stats(hidden: jax.Array, kernel: jax.Array, targets: jax.Array, config: ModelConfig,
                temperature: float = 1.0, chunk_size: int = 0, entropy: str = 'none',
                top_k: int = 0, top_p: float = 1.0) -> tuple[jax.Array, jax.Array | None]:
  """log softmax(lm_head(hidden) / temperature)[targets] and the entropy there, per token.

  Args:
    hidden: [B, T, D] final hidden states at the positions that predict `targets`.
    kernel: [D, V] the LM-head kernel (`models.lm_head.head_kernel(params, config)`).
    targets: [B, T] int token ids.
    config: the model's config (soft cap).
    temperature: the sampling temperature of every log-prob path.
    chunk_size: token positions per chunk; 0 or >= T = one chunk (no scan).
    entropy: 'none' (returns None), 'value' (stop-gradient metric) or 'grad' (differentiable).
    top_k, top_p: the sampler's filters (`rollout.logprobs`; defaults: none).
  Returns:
    (log-probs [B, T] float32, entropy [B, T] float32 or None).
  """
  if entropy not in ENTROPY_MODES:
    raise ValueError(f'token_stats: entropy={entropy!r}; use one of {ENTROPY_MODES}.')
  b, t, d = hidden.shape
  if chunk_size <= 0 or chunk_size >= t:
    return _chunk_stats(hidden, kernel, targets, config, temperature, entropy, top_k, top_p)
  n = -(-t // chunk_size)
  pad = n * chunk_size - t
  # [B, T, .] -> [n, B, C, .]: the scan walks the token axis; rows (batch-sharded) stay put.
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, chunk_size, d).swapaxes(0, 1)
  y = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, chunk_size).swapaxes(0, 1)

  # Cast once, outside the loop: the kernel's cotangent then sums over chunks in float32.
  kernel = kernel.astype(jnp.float32)

  @jax.checkpoint
  def body(carry: None, xs: tuple[jax.Array, jax.Array]) -> tuple[None, Any]:
    return carry, _chunk_stats(xs[0], kernel, xs[1], config, temperature, entropy, top_k,
                              top_p)

  _, (logprobs, ent) = jax.lax.scan(body, None, (h, y))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(b, n * chunk_size)[:, :t]
  return unchunk(logprobs), None if ent is None else unchunk(ent)
