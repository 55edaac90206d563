"""`read`: hidden states at chosen positions only. The numbers and gradients are the full
forward's at those positions, in every layout (trimmed last layer, scanned, remat, KV cache,
shared prefix), and the trimmed program does less work."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models
from deepalign.models import ModelConfig, Transformer, read_positions, shared_prefix
from deepalign.models.kv_cache import init_cache
from deepalign.models.transformer import last_token_positions

T = 10


def _params(model: Transformer):
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda x: jnp.asarray(0.3 * rng.standard_normal(x.shape), x.dtype), shapes)


def _batch(cfg: ModelConfig, rows: int = 3):
  tokens = jnp.asarray(np.random.default_rng(1).integers(3, cfg.vocab_size, (rows, T)))
  mask = jnp.ones((rows, T), jnp.int32).at[0, :3].set(0).at[1, T - 2:].set(0)  # left / right pad
  return tokens, mask


READS = {'slice': slice(4, T - 1), 'rows': jnp.array([[9, 2], [7, 7], [0, 5]])}


@pytest.mark.parametrize('family,layout', [('llama', 'trimmed'), ('gemma2', 'trimmed'),
                                           ('qwen3', 'scanned'), ('mistral', 'remat'),
                                           ('gpt2', 'trimmed'), ('llama', 'untrimmed')])
@pytest.mark.parametrize('kind', list(READS))
def test_equals_the_full_forward_and_its_gradient(family, layout, kind):
  cfg = ModelConfig.tiny(family, scan_layers=layout == 'scanned',
                         remat='full' if layout == 'remat' else 'none',
                         trim_last_layer=layout != 'untrimmed')
  model = Transformer(cfg)
  params = _params(model)
  tokens, mask = _batch(cfg)
  read = READS[kind]

  def full(p):
    hidden = model.apply({'params': p}, tokens, mask, method=Transformer.hidden_states)
    return read_positions.take(hidden, read)

  def trimmed(p):
    return model.apply({'params': p}, tokens, mask, read=read, method=Transformer.hidden_states)

  got, want = jax.jit(trimmed)(params), jax.jit(full)(params)
  assert got.shape == (3, read_positions.count(read, T), cfg.hidden_size)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda p: jnp.sum(jnp.sin(f(p)))
  grads = jax.jit(jax.grad(loss(trimmed)))(params), jax.jit(jax.grad(loss(full)))(params)
  # Some leaves' gradients are rounding noise (~1e-8, e.g. a bias before a norm): the scale is
  # the largest gradient's.
  scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(grads[1]))
  for a, b in zip(*(jax.tree.leaves(g) for g in grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])


def test_the_last_layer_runs_only_the_read_positions():
  cfg = ModelConfig.tiny('llama', num_layers=2, hidden_size=64, intermediate_size=256)
  model = Transformer(cfg)
  params = _params(model)
  tokens, mask = _batch(cfg)
  run = lambda read: lambda p: model.apply({'params': p}, tokens, mask, read=read,
                                           method=Transformer.hidden_states)
  everything, one = _flops(run(None), params), _flops(run(slice(T - 1, T)), params)
  # Two layers: the second runs keys and values only, except at one position of ten.
  assert one < 0.7 * everything
  untrimmed = Transformer(model.config.replace(trim_last_layer=False))
  run_untrimmed = lambda p: untrimmed.apply({'params': p}, tokens, mask, read=slice(T - 1, T),
                                            method=Transformer.hidden_states)
  assert _flops(run_untrimmed, params) >= 0.95 * everything
  # Scanned, the stack is one program: the same work as reading every position.
  scanned = Transformer(ModelConfig.tiny('llama', num_layers=2, hidden_size=64,
                                         intermediate_size=256, scan_layers=True))
  scanned_params = _params(scanned)
  run_scanned = lambda read: lambda p: scanned.apply({'params': p}, tokens, mask, read=read,
                                                     method=Transformer.hidden_states)
  assert (_flops(run_scanned(slice(T - 1, T)), scanned_params)
          >= 0.95 * _flops(run_scanned(None), scanned_params))


def test_score_head_reads_the_last_real_token():
  cfg = ModelConfig.tiny('llama', head='score')
  model = Transformer(cfg)
  params = _params(model)
  tokens, mask = _batch(cfg)
  hidden = model.apply({'params': params}, tokens, mask, method=Transformer.hidden_states)
  want = model.apply({'params': params}, hidden, mask, method=Transformer.head_outputs)
  np.testing.assert_allclose(jax.jit(model.apply)({'params': params}, tokens, mask), want,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(last_token_positions(mask), [T - 1, T - 3, T - 1])


@pytest.mark.parametrize('trim', [True, False])
def test_value_head_reads(trim):
  cfg = ModelConfig.tiny('llama', head='value', trim_last_layer=trim)
  model = Transformer(cfg)
  params = _params(model)
  tokens, mask = _batch(cfg)
  full = model.apply({'params': params}, tokens, mask)
  got = jax.jit(lambda p: model.apply({'params': p}, tokens, mask, read=slice(2, 8)))(params)
  np.testing.assert_allclose(got, full[:, 2:8], rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match='lm and value heads'):
    Transformer(cfg.replace(head='score')).apply({'params': params}, tokens, mask, read=slice(2, 8))


def test_prefill_with_a_cache_reads_the_last_position():
  cfg = ModelConfig.tiny('llama')
  model = Transformer(cfg)
  params = _params(model)
  tokens, mask = _batch(cfg)
  mask = mask.at[1].set(1)  # a prefill is left-padded

  def prefill(read):
    return jax.jit(lambda p: model.apply({'params': p}, tokens, mask, cache=init_cache(cfg, 3, 12),
                                         read=read, method=Transformer.hidden_states))(params)

  (full, cache), (last, cache_last) = prefill(None), prefill(slice(T - 1, T))
  np.testing.assert_allclose(last, full[:, -1:], rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(cache_last), jax.tree.leaves(cache)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize('read', [slice(4, 9), slice(0, 3), slice(6, 10), slice(0, 10),
                                  jnp.array([[9], [2], [4], [5]]),
                                  jnp.array([[1, 7], [5, 4], [0, 9], [3, 3]])])
def test_shared_prefix_reads(read):
  cfg = ModelConfig.tiny('llama')
  model = Transformer(cfg)
  params = _params(model)
  tokens, _ = _batch(cfg, rows=4)
  tokens = tokens.at[1, :5].set(tokens[0, :5]).at[3, :5].set(tokens[2, :5])
  mask, groups = jnp.ones_like(tokens), np.array([0, 0, 1, 1])
  full = model.apply({'params': params}, tokens, mask, method=Transformer.hidden_states)
  got = jax.jit(lambda p: shared_prefix.hidden_states(model, p, tokens, mask, None, 5, groups,
                                                      read))(params)
  np.testing.assert_allclose(got, read_positions.take(full, read), rtol=1e-5, atol=1e-5)


def test_bad_reads_are_refused():
  x = jnp.zeros((2, 5, 3))
  with pytest.raises(ValueError, match=r'\[B, R\]'):
    read_positions.take(x, jnp.zeros((3, 1), jnp.int32))
  model = Transformer(ModelConfig.tiny('llama'))
  tokens = jnp.ones((2, 6), jnp.int32)
  with pytest.raises(ValueError, match='step 1'):
    shared_prefix.hidden_states(model, _params(model), tokens, tokens, None, 3, np.array([0, 0]),
                                slice(0, 6, 2))
