"""Transformer: parameter tree, heads, masks, families, dtypes, config validation."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models
from deepalign.errors import UserError
from deepalign.models import ModelConfig, Transformer

FAMILIES = ['llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'gemma2', 'gpt2']


def _random_params(model: Transformer, seed: int = 0, std: float = 0.15):
  """Random parameters without compiling an init (numpy; shapes from an abstract init).

  Norm scales and biases are random too, so (1 + w), biases and LayerNorm terms all matter.
  """
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  plus_one = model.config.norm_scale_plus_one

  def make(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape)
    if 'norm' in name and 'scale' in name:
      value = (0.0 if plus_one else 1.0) + 0.2 * noise
    elif 'bias' in name:
      value = 0.2 * noise
    else:
      value = std * noise
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(make, shapes)


def _setup(cfg: ModelConfig, seed: int = 0):
  model = Transformer(cfg)
  return model, _random_params(model, seed)


def _apply(model: Transformer, variables, *args, **kwargs):
  """model.apply under jit: one compile instead of op-by-op dispatch (the tests share 2 cores)."""
  return jax.jit(functools.partial(model.apply, **kwargs))(variables, *args)


def _tokens(cfg, batch=3, length=9, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.integers(3, cfg.vocab_size, size=(batch, length)), jnp.int32)


def test_w_tiny_parameter_count_and_shapes():
  cfg = ModelConfig.w_tiny()
  shapes = jax.eval_shape(lambda: models.init_params(Transformer(cfg), jax.random.key(0)))
  assert sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)) == 4_212_992 == cfg.num_params()
  assert shapes['embed']['embedding'].shape == (2048, 256)
  assert shapes['lm_head']['kernel'].shape == (256, 2048)
  attn = shapes['layers_3']['attn']
  assert attn['q_proj']['kernel'].shape == (256, 4, 64)
  assert attn['o_proj']['kernel'].shape == (4, 64, 256)
  assert shapes['layers_0']['mlp']['gate_proj']['kernel'].shape == (256, 688)
  assert set(shapes['layers_0']) == {'input_norm', 'attn', 'pre_mlp_norm', 'mlp'}


@pytest.mark.parametrize('family', FAMILIES)
def test_family_parameter_trees(family):
  cfg = ModelConfig.tiny(family)
  params = jax.eval_shape(lambda: models.init_params(Transformer(cfg), jax.random.key(0)))
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()
  layer = params['layers_0']
  assert ('lm_head' in params) == (not cfg.tie_word_embeddings)
  assert ('pos_embed' in params) == (family == 'gpt2')
  assert ('gate_proj' in layer['mlp']) == (family != 'gpt2')
  assert ('bias' in layer['attn']['q_proj']) == (family in ('qwen2', 'gpt2'))
  assert ('bias' in layer['attn']['o_proj']) == (family == 'gpt2')
  assert ('q_norm' in layer['attn']) == (family == 'qwen3')
  assert ('post_attn_norm' in layer) == ('post_mlp_norm' in layer) == (family == 'gemma2')
  assert ('bias' in layer['input_norm']) == (family == 'gpt2')
  k, hd = cfg.num_kv_heads, cfg.head_dim
  assert layer['attn']['k_proj']['kernel'].shape == (cfg.hidden_size, k, hd)


def test_logical_axes_match_params_and_contract():
  model = Transformer(ModelConfig.tiny('gpt2'))
  axes = models.logical_axes(model)
  params = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  is_axes = lambda x: isinstance(x, tuple)
  assert jax.tree.structure(axes, is_leaf=is_axes) == jax.tree.structure(params)
  for a, p in zip(jax.tree.leaves(axes, is_leaf=is_axes), jax.tree.leaves(params)):
    assert len(a) == p.ndim
  assert axes['embed']['embedding'] == ('vocab', 'embed')
  assert axes['pos_embed']['embedding'] == (None, 'embed')
  assert axes['layers_1']['attn']['q_proj']['kernel'] == ('embed', 'heads', 'kv')
  assert axes['layers_1']['attn']['k_proj']['kernel'] == ('embed', 'kv_heads', 'kv')
  assert axes['layers_1']['attn']['o_proj']['kernel'] == ('heads', 'kv', 'embed')
  assert axes['layers_1']['mlp']['down_proj']['kernel'] == ('mlp', 'embed')
  assert axes['final_norm']['bias'] == ('norm',)
  score_axes = models.logical_axes(Transformer(ModelConfig.tiny('llama', head='score')))
  assert score_axes['score']['kernel'] == ('embed', None)
  assert 'lm_head' not in score_axes


def test_apply_accepts_boxed_and_plain_params():
  cfg = ModelConfig.tiny('gemma', num_layers=1)
  model = Transformer(cfg)
  tokens = _tokens(cfg)
  boxed = jax.jit(model.init)(jax.random.key(0), tokens)
  assert isinstance(boxed['params']['embed']['embedding'], nn.Partitioned)
  plain = nn.meta.unbox(boxed)
  # Gemma stores w and applies (1 + w): a fresh norm must be w = 0 (identity), as in HF.
  np.testing.assert_array_equal(plain['params']['layers_0']['input_norm']['scale'], 0.0)
  assert float(jnp.std(plain['params']['embed']['embedding'])) == pytest.approx(0.02, rel=0.1)
  np.testing.assert_allclose(_apply(model, boxed, tokens), _apply(model, plain, tokens), atol=0)


@pytest.mark.parametrize('family', FAMILIES)
def test_left_padding_does_not_change_real_logits(family):
  cfg = ModelConfig.tiny(family)
  model, params = _setup(cfg)
  tokens = _tokens(cfg, batch=2, length=8)
  ref = _apply(model, {'params': params}, tokens)
  pad = 3
  padded = jnp.concatenate([jnp.zeros((2, pad), jnp.int32), tokens], axis=1)
  mask = jnp.concatenate([jnp.zeros((2, pad), jnp.int32), jnp.ones_like(tokens)], axis=1)
  out = _apply(model, {'params': params}, padded, mask)
  assert np.all(np.isfinite(out))
  np.testing.assert_allclose(out[:, pad:], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('family', ['llama', 'gemma2', 'gpt2'])
def test_causal(family):
  cfg = ModelConfig.tiny(family)
  model, params = _setup(cfg)
  tokens = _tokens(cfg, length=8)
  changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % cfg.vocab_size)
  a, b = _apply(model, {'params': params}, tokens), _apply(model, {'params': params}, changed)
  np.testing.assert_allclose(a[:, :5], b[:, :5], atol=1e-6)
  assert np.abs(a[:, 5:] - b[:, 5:]).max() > 1e-4


def test_sliding_window_limits_receptive_field():
  # Mistral preset: every layer slides with window 5; 2 layers see at most 2 * 4 slots back.
  cfg = ModelConfig.tiny('mistral')
  assert cfg.sliding_window == 5 and cfg.num_layers == 2
  model, params = _setup(cfg)
  tokens = _tokens(cfg, length=12)
  changed = tokens.at[:, 0].set((tokens[:, 0] + 1) % cfg.vocab_size)
  a, b = _apply(model, {'params': params}, tokens), _apply(model, {'params': params}, changed)
  diff = np.abs(np.asarray(a - b)).max(axis=(0, 2))
  assert np.all(diff[9:] < 1e-6) and diff[8] > 1e-5
  full = Transformer(dataclasses.replace(cfg, sliding_window=None))
  a, b = _apply(full, {'params': params}, tokens), _apply(full, {'params': params}, changed)
  assert np.abs(np.asarray(a - b))[:, 9:].max() > 1e-5


def test_final_logit_softcap_bounds_logits():
  cfg = ModelConfig.tiny('gemma2', final_logit_softcap=0.5)
  model, params = _setup(cfg)
  params = jax.tree.map(lambda x: x * 30, params)  # blow the raw logits up
  logits = _apply(model, {'params': params}, _tokens(cfg))
  assert np.abs(logits).max() <= 0.5 and np.abs(logits).max() > 0.45


def test_linear_rope_scaling_divides_positions():
  cfg = ModelConfig.tiny('llama', rope_scaling_type='none')
  scaled = dataclasses.replace(cfg, rope_scaling_type='linear', rope_scaling_factor=2.0)
  model, params = _setup(cfg)
  tokens = _tokens(cfg, length=5)
  positions = jnp.broadcast_to(jnp.arange(5), tokens.shape)
  ones = jnp.ones_like(tokens)
  a = _apply(model, {'params': params}, tokens, ones, positions=positions)
  b = Transformer(scaled).apply({'params': params}, tokens, ones, positions=2 * positions)
  np.testing.assert_allclose(a, b, atol=1e-5)


def test_grouped_query_attention_equals_repeated_kv_heads():
  gqa = ModelConfig.tiny('llama', num_heads=4, num_kv_heads=2)
  model, params = _setup(gqa)
  mha_params = jax.tree.map(lambda x: x, params)
  for i in range(gqa.num_layers):
    attn = mha_params[f'layers_{i}']['attn']
    for name in ('k_proj', 'v_proj'):
      attn[name]['kernel'] = jnp.repeat(attn[name]['kernel'], 2, axis=1)
  mha = Transformer(dataclasses.replace(gqa, num_kv_heads=4))
  tokens = _tokens(gqa)
  np.testing.assert_allclose(_apply(model, {'params': params}, tokens),
                             _apply(mha, {'params': mha_params}, tokens), atol=1e-5)


def test_score_value_and_hidden_states():
  base = ModelConfig.tiny('qwen2')
  value_model = Transformer(dataclasses.replace(base, head='value', tie_word_embeddings=False))
  score_model = Transformer(dataclasses.replace(base, head='score', tie_word_embeddings=False))
  params = _random_params(score_model, 3)
  tokens = _tokens(base, batch=3, length=6)
  mask = jnp.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 0]])
  values = _apply(value_model, {'params': params}, tokens, mask)
  scores = _apply(score_model, {'params': params}, tokens, mask)
  assert values.shape == (3, 6) and scores.shape == (3,)
  np.testing.assert_allclose(scores, values[jnp.arange(3), jnp.array([5, 3, 4])], atol=1e-6)
  hidden = _apply(score_model, {'params': params}, tokens, mask, method=score_model.hidden_states)
  assert hidden.shape == (3, 6, base.hidden_size)
  np.testing.assert_allclose(hidden @ params['score']['kernel'], values[..., None], atol=1e-5)
  multi = Transformer(dataclasses.replace(base, head='score', num_labels=3))
  multi_params = _random_params(multi)
  assert _apply(multi, {'params': multi_params}, tokens, mask).shape == (3, 3)


def test_lm_hidden_states_times_head_is_logits():
  cfg = ModelConfig.tiny('gemma')  # tied embeddings, sqrt(D) embedding scale
  model, params = _setup(cfg)
  tokens = _tokens(cfg)
  hidden = _apply(model, {'params': params}, tokens, method=model.hidden_states)
  logits = _apply(model, {'params': params}, tokens)
  np.testing.assert_allclose(hidden @ params['embed']['embedding'].T, logits, atol=1e-5)


def test_bfloat16_compute_and_params():
  cfg = ModelConfig.tiny('gemma2', dtype='bfloat16', param_dtype=jnp.bfloat16)
  assert cfg.param_dtype == 'bfloat16'
  model, params = _setup(cfg)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params))
  logits = _apply(model, {'params': params}, _tokens(cfg))
  # The LM head runs in float32 whatever the compute dtype (models/lm_head.py).
  assert logits.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(logits)))
  f32 = Transformer(dataclasses.replace(cfg, dtype='float32', param_dtype='float32'))
  ref = _apply(f32, {'params': jax.tree.map(lambda x: x.astype(jnp.float32), params)}, _tokens(cfg))
  np.testing.assert_allclose(np.asarray(logits, np.float32), ref, atol=0.15)


def test_remat_changes_nothing_numerically():
  cfg = ModelConfig.tiny('llama')
  model, params = _setup(cfg)
  remat = Transformer(dataclasses.replace(cfg, remat=True))
  tokens = _tokens(cfg)
  loss = lambda m: lambda p: jnp.mean(_apply(m, {'params': p}, tokens) ** 2)
  g1, g2 = jax.grad(loss(model))(params), jax.grad(loss(remat))(params)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-7)


def test_config_is_a_static_jit_argument():
  cfg = ModelConfig.tiny('llama')
  assert hash(cfg) == hash(ModelConfig.tiny('llama')) and cfg == ModelConfig.tiny('llama')
  f = jax.jit(lambda c, x: x * c.hidden_size, static_argnums=0)
  assert int(f(cfg, jnp.int32(2))) == 2 * cfg.hidden_size
  assert ModelConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize('changes, words', [
    (dict(num_heads=4, num_kv_heads=3), 'num_kv_heads'),
    (dict(hidden_size=30, num_heads=4, head_dim=None), 'hidden_size'),
    (dict(head='reward'), 'head'),
    (dict(dtype='float16'), 'dtype'),
    (dict(layer_types=('full_attention',)), 'layer_types'),
    (dict(layer_types=('sliding_attention', 'full_attention'), sliding_window=None),
     'sliding_window'),
    (dict(family='bert'), 'family'),
    (dict(vocab_size=0), 'vocab_size'),
    (dict(head='value', num_labels=2), 'num_labels'),
])
def test_config_validation(changes, words):
  values = ModelConfig.tiny('llama').to_dict()
  values.update(changes)
  with pytest.raises(UserError, match=words):
    ModelConfig(**values)


def test_head_dim_defaults_and_replace_rederives_it():
  cfg = ModelConfig(hidden_size=64, num_heads=8)
  assert cfg.head_dim == 8 and cfg.num_kv_heads == 8
  assert cfg.replace(hidden_size=128).head_dim == 16
  assert ModelConfig.tiny('qwen3').replace(hidden_size=64).head_dim == 16  # explicit head_dim kept
  with pytest.raises(UserError, match='from_dict'.replace('from_dict', 'no field')):
    ModelConfig.from_dict({'hiddden_size': 3})


def test_presets_build():
  for preset in (ModelConfig.llama3_8b(), ModelConfig.gemma2_2b(), ModelConfig.qwen2_5_0_5b()):
    assert preset.num_params() > 4e8
  assert abs(ModelConfig.llama3_8b().num_params() - 8.03e9) < 0.01e9
  assert abs(ModelConfig.gemma2_2b().num_params() - 2.61e9) < 0.01e9
  assert ModelConfig.gemma2_2b().is_sliding(0) and not ModelConfig.gemma2_2b().is_sliding(1)
