"""The LM head as a pure function: equal to `Transformer.logits`, float32 for bfloat16 models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.models import ModelConfig, Transformer, init_params
from deepalign.models.lm_head import head_kernel, lm_logits, soft_cap


@pytest.mark.parametrize('family', ['llama', 'gemma2'])  # untied; tied + soft cap
def test_pure_head_is_the_module_head(family):
  cfg = ModelConfig.tiny(family)
  model = Transformer(cfg)
  params = init_params(model, jax.random.key(0))
  tokens = jnp.arange(10).reshape(2, 5) % cfg.vocab_size
  hidden = model.apply({'params': params}, tokens, method=Transformer.hidden_states)
  want = model.apply({'params': params}, tokens)
  got = lm_logits(hidden, head_kernel(params, cfg), cfg)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  assert head_kernel(params, cfg).shape == (cfg.hidden_size, cfg.vocab_size)


def test_bfloat16_model_gets_float32_capped_logits():
  # Gemma-2's cap of 30: near the cap bfloat16 spacing is 0.125, float32 keeps the difference.
  cfg = ModelConfig.tiny('gemma2', dtype='bfloat16', param_dtype='bfloat16', final_logit_softcap=30.0)
  hidden = (jax.random.normal(jax.random.key(1), (2, 3, cfg.hidden_size)) * 40).astype(jnp.bfloat16)
  kernel = jax.random.normal(jax.random.key(2), (cfg.hidden_size, cfg.vocab_size)).astype(jnp.bfloat16)
  logits = lm_logits(hidden, kernel, cfg)
  assert logits.dtype == jnp.float32
  exact = 30.0 * np.tanh((np.asarray(hidden, np.float64) @ np.asarray(kernel, np.float64)) / 30.0)
  np.testing.assert_allclose(np.asarray(logits), exact, atol=1e-4)
  rounded = lm_logits(hidden, kernel, cfg, dtype=jnp.bfloat16)
  assert np.max(np.abs(np.asarray(rounded, np.float64) - exact)) > 1e-2  # what float32 avoids
  np.testing.assert_array_equal(np.asarray(soft_cap(logits, None)), np.asarray(logits))
