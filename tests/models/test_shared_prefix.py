"""shared_prefix: rows that share their first S tokens, the shared part run once per group, give
the full forward's hidden states and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models
from deepalign.models import ModelConfig, Transformer, shared_prefix


def _params(model: Transformer):
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), shapes)


def _rows(cfg: ModelConfig, groups: np.ndarray, t: int, s: int):
  """Rows equal within their group over the first s columns, different after; right padding."""
  rng = np.random.default_rng(1)
  first, source = shared_prefix.group_layout(groups)
  tokens = rng.integers(3, cfg.vocab_size, (len(first), t))[source]
  tokens[:, s:] = rng.integers(3, cfg.vocab_size, (len(groups), t - s))
  mask = np.ones_like(tokens)
  mask[0, t - 2:] = 0
  mask[-1, t - 4:] = 0
  positions = np.broadcast_to(np.arange(t), tokens.shape).copy()
  return tokens, mask, positions


@pytest.mark.parametrize('family,scan,groups', [
    ('llama', False, np.array([0, 1, 2, 0, 1, 2])),      # DPO: chosen rows, then rejected rows
    ('gemma2', True, np.repeat(np.arange(2), 3)),          # GRPO: contiguous groups; sliding window
    ('qwen2', False, np.array([0, 0, 1, 2, 2, 2]))])       # uneven groups, q/k/v bias, GQA
def test_equals_the_full_forward_and_its_gradient(family, scan, groups):
  cfg = ModelConfig.tiny(family, scan_layers=scan)
  model = Transformer(cfg)
  params = _params(model)
  t, s = 11, 5
  tokens, mask, positions = (jnp.asarray(a) for a in _rows(cfg, groups, t, s))
  assert shared_prefix.common_prefix_len(groups, np.asarray(tokens)) == s
  weight = mask[..., None]  # padding positions are nobody's target: not compared

  def full(p):
    return model.apply({'params': p}, tokens, mask, positions, method=Transformer.hidden_states)

  def shared(p):
    return shared_prefix.hidden_states(model, p, tokens, mask, positions, s, groups)

  np.testing.assert_allclose(jax.jit(shared)(params) * weight, jax.jit(full)(params) * weight,
                             rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)) * weight)
  # jitted: op by op, the two gradients took 20-40 s of dispatch per case
  got, want = jax.jit(jax.grad(loss(shared)))(params), jax.jit(jax.grad(loss(full)))(params)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.abs(b).max()))


def test_common_prefix_len_and_group_layout():
  groups = np.array([3, 3, 7, 7])
  first, source = shared_prefix.group_layout(groups)
  np.testing.assert_array_equal(first, [0, 2])
  np.testing.assert_array_equal(source, [0, 0, 1, 1])
  a = np.array([[1, 2, 3, 4], [1, 2, 9, 4], [5, 6, 7, 8], [5, 6, 7, 0]])
  assert shared_prefix.common_prefix_len(groups, a) == 2
  mask = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]])
  assert shared_prefix.common_prefix_len(groups, a, mask) == 1
  assert shared_prefix.common_prefix_len(np.array([0, 0]), a[:1].repeat(2, 0)) == 4


def test_prefix_len_out_of_range_is_refused():
  cfg = ModelConfig.tiny('llama')
  model = Transformer(cfg)
  tokens = jnp.ones((2, 4), jnp.int32)
  with pytest.raises(ValueError, match='prefix_len'):
    shared_prefix.hidden_states(model, _params(model), tokens, tokens, None, 4, np.array([0, 0]))
