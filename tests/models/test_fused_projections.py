"""fused_projections: decode parameters with q|k|v and gate|up fused give the separate layers' outputs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models, rollout
from deepalign.models import ModelConfig, Transformer, fused_projections
from deepalign.rollout import SamplingConfig


def _params(model: Transformer, seed: int = 0):
  """Random parameters (biases included: zero-initialised biases would hide a misplaced one)."""
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda leaf: jnp.asarray(0.3 * rng.standard_normal(leaf.shape), leaf.dtype),
                      shapes)


@pytest.mark.parametrize('family,scan', [('qwen2', False), ('llama', True), ('gpt2', False)])
def test_fused_tree_layout(family, scan):
  cfg = ModelConfig.tiny(family, scan_layers=scan)
  params = _params(Transformer(cfg))
  fused = fused_projections.fuse(params)
  layer = 'layers' if scan else 'layers_0'
  attn, mlp = fused[layer]['attn'], fused[layer]['mlp']
  lead = (cfg.num_layers,) if scan else ()
  heads = cfg.num_heads + 2 * cfg.num_kv_heads
  assert attn['qkv_kernel'].shape == lead + (cfg.hidden_size, heads, cfg.head_dim)
  assert not any(name in attn for name in fused_projections.QKV)
  assert ('qkv_bias' in attn) == cfg.qkv_bias
  # q first, then k, then v, along the heads axis.
  h, k = cfg.num_heads, cfg.num_kv_heads
  np.testing.assert_array_equal(attn['qkv_kernel'][..., h:h + k, :],
                                params[layer]['attn']['k_proj']['kernel'])
  if cfg.mlp_type == 'gated':
    assert mlp['gate_up_kernel'].shape == lead + (cfg.hidden_size, 2 * cfg.intermediate_size)
    np.testing.assert_array_equal(mlp['gate_up_kernel'][..., cfg.intermediate_size:],
                                  params[layer]['mlp']['up_proj']['kernel'])
  else:  # GPT-2's plain MLP has no gate: up stays a layer of its own
    assert 'up_proj' in mlp and 'gate_up_kernel' not in mlp
  # A new tree: the parameters themselves keep their separate layers.
  assert all(name in params[layer]['attn'] for name in fused_projections.QKV)
  # Everything else is the same object: only the fused layers are new arrays.
  assert fused['embed']['embedding'] is params['embed']['embedding']


@pytest.mark.parametrize('family', ['qwen2', 'gemma2', 'gpt2'])
def test_fused_forward_equals_separate_layers(family):
  """Full forward and a cached forward (the decode path) with fused params: the same logits."""
  cfg = ModelConfig.tiny(family)
  model = Transformer(cfg)
  params = _params(model)
  fused = fused_projections.fuse(params)
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 7)), jnp.int32)
  apply = jax.jit(model.apply)
  np.testing.assert_allclose(apply({'params': fused}, tokens), apply({'params': params}, tokens),
                             rtol=1e-5, atol=1e-5)
  cache = models.init_cache(cfg, 3, 7)
  cached = jax.jit(lambda p: model.apply({'params': p}, tokens, cache=cache)[0])
  np.testing.assert_allclose(cached(fused), cached(params), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('scan', [False, True])
def test_generate_samples_the_same_tokens_fused_or_not(scan):
  cfg = ModelConfig.tiny('qwen2', scan_layers=scan)  # GQA (4 query heads, 2 KV heads), q/k/v bias
  model = Transformer(cfg)
  params = _params(model)
  rng = np.random.default_rng(2)
  prompt = jnp.asarray(rng.integers(3, cfg.vocab_size, (4, 5)), jnp.int32)
  mask = jnp.ones_like(prompt)
  config = SamplingConfig(max_new_tokens=6, stop_at_eos=False, eos_id=2, pad_id=0)
  fused = rollout.generate(model, params, prompt, mask, jax.random.key(3), config=config)
  plain = rollout.generate(model, params, prompt, mask, jax.random.key(3),
                           config=dataclasses.replace(config, fuse_projections=False))
  np.testing.assert_array_equal(fused.tokens, plain.tokens)
  np.testing.assert_allclose(fused.logprobs, plain.logprobs, rtol=1e-5, atol=1e-5)
