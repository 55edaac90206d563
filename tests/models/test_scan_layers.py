"""Scanned layers (`ModelConfig.scan_layers`) and remat policies: same function as the unscanned
stack (logits, cache prefill + decode, gradients), stacked params with a 'layers' axis, HF
checkpoints in and out in both layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models
from deepalign.errors import UserError
from deepalign.models import ModelConfig, Transformer, init_params
from deepalign.rollout.generate import generate
from deepalign.rollout.sampling_config import SamplingConfig


def stacked(params, num_layers):
  """The unscanned tree's layers stacked as a scanned model holds them."""
  out = {k: v for k, v in params.items() if not k.startswith('layers_')}
  out['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs),
                               *[params[f'layers_{i}'] for i in range(num_layers)])
  return out


def _tokens(cfg, b=2, t=6):
  return (jnp.arange(b * t).reshape(b, t) * 7 + 3) % cfg.vocab_size


@pytest.fixture(scope='module')
def gemma2():
  # Alternating sliding / full layers: the scanned block picks its mask by a scanned flag.
  cfg = ModelConfig.tiny('gemma2', sliding_window=3, num_layers=2,
                         layer_types=('sliding_attention', 'full_attention'))
  model = Transformer(cfg)
  return cfg, model, init_params(model, jax.random.key(0))


def test_scanned_params_are_stacked_with_a_layers_axis(gemma2):
  cfg, _, params = gemma2
  scanned = Transformer(cfg.replace(scan_layers=True))
  shapes = jax.eval_shape(lambda: init_params(scanned, jax.random.key(0)))
  assert set(shapes) == {'embed', 'final_norm', 'layers'}
  assert shapes['layers']['attn']['q_proj']['kernel'].shape == (2,) + params['layers_0']['attn']['q_proj']['kernel'].shape
  axes = models.logical_axes(scanned)
  assert axes['layers']['attn']['q_proj']['kernel'] == ('layers', 'embed', 'heads', 'kv')
  assert axes['layers']['input_norm']['scale'] == ('layers', 'norm')


def test_scanned_equals_unscanned_logits_and_grads(gemma2):
  cfg, model, params = gemma2
  scanned = Transformer(cfg.replace(scan_layers=True, remat='dots_with_no_batch_dims_saveable'))
  tokens = _tokens(cfg)
  mask = jnp.array([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
  loss = lambda m: jax.jit(jax.value_and_grad(
      lambda p: jnp.mean(m.apply({'params': p}, tokens, mask) ** 2)))
  (want, g_want), (got, g_got) = loss(model)(params), loss(scanned)(stacked(params, cfg.num_layers))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  np.testing.assert_allclose(g_got['layers']['mlp']['up_proj']['kernel'][1],
                             g_want['layers_1']['mlp']['up_proj']['kernel'], atol=1e-6)


def test_scanned_generate_matches_unscanned_forward(gemma2):
  # Prefill fills the stacked cache, the decode loop reads and writes it layer by layer; the
  # sampled tokens' log-probs are those of the unscanned model's full forward.
  cfg, model, params = gemma2
  scanned = Transformer(cfg.replace(scan_layers=True))
  cache = models.init_cache(scanned.config, 2, 5)
  assert cache.keys.shape == (2, 2, cfg.num_kv_heads, 5, cfg.head_dim) and len(cache.keys) == 2
  prompts, mask = _tokens(cfg, 2, 4), jnp.array([[0, 1, 1, 1], [1, 1, 1, 1]])
  sampling = SamplingConfig(max_new_tokens=4, temperature=1.0, stop_at_eos=False)
  out = generate(scanned, stacked(params, cfg.num_layers), prompts, mask, jax.random.key(3), sampling)
  tokens = jnp.concatenate([prompts, out.tokens], axis=1)
  logits = model.apply({'params': params}, tokens, jnp.concatenate([mask, out.response_mask], 1))
  want = jax.nn.log_softmax(logits[:, 3:-1], axis=-1)
  want = jnp.take_along_axis(want, out.tokens[..., None], axis=-1)[..., 0]
  np.testing.assert_allclose(out.logprobs, want, atol=1e-5)


def test_hf_round_trip_with_scanned_layers(gemma2, tmp_path):
  cfg, model, params = gemma2
  models.save_pretrained(model, params, tmp_path / 'flat')
  scanned, scanned_params = models.from_pretrained(tmp_path / 'flat', scan_layers=True)
  assert scanned.config.scan_layers and 'layers' in scanned_params
  jax.tree.map(np.testing.assert_array_equal, scanned_params, stacked(params, cfg.num_layers))
  models.save_pretrained(scanned, scanned_params, tmp_path / 'scanned', max_shard_size=4000)
  _, back = models.from_pretrained(tmp_path / 'scanned')
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_remat_policy_names():
  assert ModelConfig.tiny(remat=True).remat == 'full'
  assert ModelConfig.tiny(remat=False).remat == 'none'
  assert ModelConfig.tiny(remat='dots_saveable').replace(num_layers=1).remat == 'dots_saveable'
  with pytest.raises(UserError, match=r"remat='dots' is not a remat policy; use one of"):
    ModelConfig.tiny(remat='dots')
