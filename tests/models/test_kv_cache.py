"""KV cache: prefill + token-by-token (and chunked) decoding equals the full forward pass."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models
from deepalign.errors import UserError
from deepalign.models import KVCache, ModelConfig, Transformer, init_cache


def _random_params(model: Transformer, seed: int = 0, std: float = 0.15):
  """Random parameters (numpy, shapes from an abstract init: no init compile)."""
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  base = 0.0 if model.config.norm_scale_plus_one else 1.0

  def make(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape)
    value = (base + 0.2 * noise if 'norm' in name and 'scale' in name
             else 0.2 * noise if 'bias' in name else std * noise)
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(make, shapes)


def _batch(cfg: ModelConfig, length: int, pads: tuple[int, ...]):
  """Left-padded tokens/mask [B, length] with pads[i] padding slots in row i."""
  rng = np.random.default_rng(1)
  tokens = rng.integers(3, cfg.vocab_size, size=(len(pads), length))
  mask = (np.arange(length)[None, :] >= np.array(pads)[:, None]).astype(np.int32)
  return jnp.asarray(tokens * mask, jnp.int32), jnp.asarray(mask)


def _decode(model, params, tokens, mask, prefill: int, chunk: int):
  """Logits [B, T, V] from a cached prefill of `prefill` slots then chunks of `chunk` tokens."""
  batch, length = tokens.shape
  cache = models.init_cache(model.config, batch, length + 2)  # spare slots stay invalid
  step = jax.jit(lambda p, t, m, c: model.apply({'params': p}, t, m, cache=c))
  outs = []
  for start in [0] + list(range(prefill, length, chunk)):
    stop = prefill if start == 0 else min(start + chunk, length)
    out, cache = step(params, tokens[:, start:stop], mask[:, start:stop], cache)
    outs.append(out)
  assert int(cache.index) == length
  np.testing.assert_array_equal(cache.valid[:, :length], mask.astype(bool))
  return jnp.concatenate(outs, axis=1), cache


@pytest.mark.parametrize('family', ['llama', 'mistral', 'qwen3', 'gemma2', 'gpt2'])
def test_token_by_token_and_chunked_decoding_match_full_forward(family):
  cfg = ModelConfig.tiny(family)
  model = Transformer(cfg)
  params = _random_params(model)
  tokens, mask = _batch(cfg, length=11, pads=(0, 2, 5))
  full = jax.jit(lambda p: model.apply({'params': p}, tokens, mask))(params)
  real = np.asarray(mask, bool)
  for prefill, chunk in ((6, 1), (3, 3)):
    decoded, _ = _decode(model, params, tokens, mask, prefill, chunk)
    assert np.all(np.isfinite(decoded))
    np.testing.assert_allclose(np.asarray(decoded)[real], np.asarray(full)[real],
                               atol=1e-5, rtol=1e-5)


def test_value_head_through_cache():
  cfg = ModelConfig.tiny('llama', head='value')
  model = Transformer(cfg)
  params = _random_params(model)
  tokens, mask = _batch(cfg, length=7, pads=(0, 3))
  full = jax.jit(model.apply)({'params': params}, tokens, mask)
  decoded, _ = _decode(model, params, tokens, mask, prefill=4, chunk=1)
  np.testing.assert_allclose(np.asarray(decoded)[np.asarray(mask, bool)],
                             np.asarray(full)[np.asarray(mask, bool)], atol=1e-5)


def test_init_cache_layout_and_pytree():
  cfg = ModelConfig.tiny('gemma2', dtype='bfloat16')
  cache = models.init_cache(cfg, batch=2, max_len=9)
  assert isinstance(cache, KVCache) and cache.max_len == 9 and cache.batch_size == 2
  assert len(cache.keys) == len(cache.values) == cfg.num_layers
  assert cache.keys[0].shape == (2, cfg.num_kv_heads, 9, cfg.head_dim)
  assert cache.keys[0].dtype == jnp.bfloat16  # default: the compute dtype
  assert models.init_cache(cfg, 2, 9, jnp.float32).values[1].dtype == jnp.float32
  assert int(cache.index) == 0 and not np.any(cache.valid)
  leaves = jax.tree.leaves(cache)
  assert len(leaves) == 2 * cfg.num_layers + 2
  moved = jax.jit(lambda c: c.replace(index=c.index + 1))(cache)
  assert int(moved.index) == 1
  with pytest.raises(UserError, match='max_len'):
    models.init_cache(cfg, batch=2, max_len=0)


def test_default_positions_continue_after_cache():
  # Without explicit positions, the cached call must number tokens after the real ones so far.
  cfg = ModelConfig.tiny('llama')
  model = Transformer(cfg)
  params = _random_params(model)
  tokens, mask = _batch(cfg, length=6, pads=(2, 0))
  apply = jax.jit(model.apply)
  full = apply({'params': params}, tokens, mask)
  cache = models.init_cache(cfg, 2, 6)
  _, cache = apply({'params': params}, tokens[:, :4], mask[:, :4], cache=cache)
  np.testing.assert_array_equal(cache.num_tokens(), [2, 4])
  out, cache = apply({'params': params}, tokens[:, 4:], None, None, cache)
  np.testing.assert_allclose(out, full[:, 4:], atol=1e-5)


def test_given_rope_tables_are_the_ones_of_the_positions():
  # generate hands every decode step its precomputed (cos, sin): the same numbers, bit for bit,
  # as the tables hidden_states computes from the positions; other tables (not a uniform shift,
  # which rope cannot see) move the output.
  from deepalign.models.rope import rope_tables
  cfg = ModelConfig.tiny('llama')
  model = Transformer(cfg)
  params = _random_params(model)
  tokens, mask = _batch(cfg, length=6, pads=(2, 0))
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0) + 3
  states = jax.jit(lambda p, rope: model.apply({'params': p}, tokens, mask, positions, rope=rope,
                                               method=Transformer.hidden_states))
  np.testing.assert_array_equal(states(params, rope_tables(cfg, positions)), states(params, None))
  assert not np.allclose(states(params, rope_tables(cfg, positions * 2)), states(params, None),
                         atol=1e-3)
  learned = Transformer(ModelConfig.tiny('gpt2'))
  with pytest.raises(ValueError, match='position_embedding'):
    learned.apply({'params': _random_params(learned)}, tokens, mask,
                  rope=rope_tables(cfg, positions), method=Transformer.hidden_states)


@pytest.mark.parametrize('scan', [False, True])
def test_grown_and_take_rows_keep_what_was_written(scan):
  cfg = ModelConfig.tiny('llama', scan_layers=scan)
  cache = init_cache(cfg, 3, 4)
  cache = cache.replace(valid=cache.valid.at[:, :2].set(True), index=jnp.int32(2))
  keys = jax.tree.map(lambda k: k.at[..., 1, :].set(1.0), cache.keys)
  cache = cache.replace(keys=keys)
  grown = cache.grown(7)
  assert grown.max_len == 7 and int(grown.index) == 2
  np.testing.assert_array_equal(grown.valid[:, :4], cache.valid)
  assert not np.asarray(grown.valid[:, 4:]).any()
  for a, b in zip(jax.tree.leaves(grown.keys), jax.tree.leaves(cache.keys)):
    np.testing.assert_array_equal(a[..., :4, :], b)
    assert not np.asarray(a[..., 4:, :]).any()
  assert cache.grown(4) is cache
  with pytest.raises(ValueError):
    cache.grown(3)
  rows = cache.take_rows(jnp.array([2, 2, 0, 1]))
  assert rows.batch_size == 4
  axis = 1 if scan else 0
  for a, b in zip(jax.tree.leaves(rows.values), jax.tree.leaves(cache.values)):
    np.testing.assert_array_equal(a, jnp.take(b, jnp.array([2, 2, 0, 1]), axis=axis))


@pytest.mark.parametrize('family,scan', [('llama', False), ('gemma2', True)])
def test_append_concatenates_after_a_full_cache(family, scan):
  """append=True: a prompt's cache of exactly its length, then the rest appended (no
  preallocated slots) gives the full forward's outputs and a cache of both parts."""
  cfg = ModelConfig.tiny(family, scan_layers=scan)
  model = Transformer(cfg)
  params = _random_params(model)
  tokens, mask = _batch(cfg, length=9, pads=(0, 2))
  full = jax.jit(model.apply)({'params': params}, tokens, mask)

  @jax.jit
  def prefix_then_rest(tokens, mask):
    hidden = lambda *a, **k: model.apply({'params': params}, *a, **k,
                                         method=Transformer.hidden_states)
    _, cache = hidden(tokens[:, :4], mask[:, :4], cache=init_cache(cfg, 2, 4))
    out, grown = hidden(tokens[:, 4:], mask[:, 4:], cache=cache, append=True)
    return model.apply({'params': params}, out, method=Transformer.logits), cache, grown

  logits, cache, grown = prefix_then_rest(tokens, mask)
  np.testing.assert_allclose(logits, full[:, 4:], atol=1e-5)
  assert grown.max_len == 9 and int(grown.index) == 9
  np.testing.assert_array_equal(grown.valid, mask.astype(bool))
  for a, b in zip(jax.tree.leaves(grown.keys), jax.tree.leaves(cache.keys)):
    np.testing.assert_array_equal(a[..., :4, :], b)
