"""Chunked log-probs / entropies equal the full-logits ones, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.models.config import ModelConfig
from deepalign.models.lm_head import lm_logits
from deepalign.rollout.chunked_logprobs import token_stats
from deepalign.rollout.logprobs import token_entropy, token_logprobs

CFG = ModelConfig(vocab_size=97, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32,
                  final_logit_softcap=5.0)
B, T, TEMP = 3, 11, 0.7


def _inputs(dtype=jnp.float32):
  k = jax.random.split(jax.random.PRNGKey(0), 3)
  hidden = jax.random.normal(k[0], (B, T, CFG.hidden_size)).astype(dtype)
  kernel = jax.random.normal(k[1], (CFG.hidden_size, CFG.vocab_size)).astype(dtype)
  targets = jax.random.randint(k[2], (B, T), 0, CFG.vocab_size)
  return hidden, kernel, targets


def _full(hidden, kernel, targets, **filters):
  logits = lm_logits(hidden, kernel, CFG)
  return (token_logprobs(logits, targets, TEMP, **filters),
          token_entropy(logits, TEMP, **filters))


def _objective(stats_fn):
  """A loss that weighs every position differently, so a misplaced chunk shows."""
  def loss(hidden, kernel):
    lp, ent = stats_fn(hidden, kernel)
    w = jnp.arange(1.0, T + 1.0)
    return jnp.sum(lp * w) + jnp.sum(ent ** 2 * w[::-1])
  return loss


@pytest.mark.parametrize('chunk', [4, 64])  # 4: three chunks, the last padded; 64: one
def test_chunks_match_the_full_logits(chunk):
  hidden, kernel, targets = _inputs()
  lp, ent = jax.jit(lambda h, w: token_stats(h, w, targets, CFG, TEMP, chunk, 'grad'))(
      hidden, kernel)
  want_lp, want_ent = jax.jit(lambda h, w: _full(h, w, targets))(hidden, kernel)
  exact = chunk >= T  # one chunk: the same computation, bit for bit
  tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-6, atol=1e-5)
  np.testing.assert_allclose(lp, want_lp, **tol)
  np.testing.assert_allclose(ent, want_ent, **tol)
  got = jax.jit(jax.grad(_objective(
      lambda h, w: token_stats(h, w, targets, CFG, TEMP, chunk, 'grad')), (0, 1)))(hidden, kernel)
  want = jax.jit(jax.grad(_objective(lambda h, w: _full(h, w, targets)), (0, 1)))(hidden, kernel)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-4)


def test_entropy_modes_filters_and_bfloat16():
  hidden, kernel, targets = _inputs()
  filters = dict(top_k=5, top_p=0.9)

  @jax.jit
  def run(hidden, kernel, hidden16, kernel16):
    none = token_stats(hidden, kernel, targets, CFG, TEMP, 4, 'none')[1]
    # 'value': the entropy is a metric; its gradient never reaches the params.
    grad = jax.grad(lambda w: jnp.sum(
        token_stats(hidden, w, targets, CFG, TEMP, 4, 'value')[1]))(kernel)
    filtered = token_stats(hidden, kernel, targets, CFG, TEMP, 4, 'value', **filters)
    lp16 = token_stats(hidden16, kernel16, targets, CFG, TEMP, 4)[0]
    grad16 = jax.grad(lambda w: jnp.sum(token_stats(hidden16, w, targets, CFG, TEMP, 4)[0]))(
        kernel16)
    want16 = _full(hidden16.astype(jnp.float32), kernel16.astype(jnp.float32), targets)[0]
    return none, grad, filtered, _full(hidden, kernel, targets, **filters), lp16, grad16, want16

  none, grad, (lp, ent), (want_lp, want_ent), lp16, grad16, want16 = run(
      hidden, kernel, hidden.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
  assert none is None and not np.asarray(grad).any()
  np.testing.assert_allclose(lp, want_lp, rtol=1e-6)
  np.testing.assert_allclose(ent, want_ent, rtol=1e-5, atol=1e-6)
  # bfloat16 hidden states and kernel: the head still runs (and answers) in float32.
  assert lp16.dtype == jnp.float32 and grad16.dtype == jnp.bfloat16
  np.testing.assert_allclose(lp16, want16, rtol=1e-6, atol=1e-5)
