"""Packed rows (segment ids in the mask, positions restarting per segment) give every example
exactly the logits it gets alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.models.config import ModelConfig
from deepalign.models.transformer import Transformer, init_params


@pytest.mark.parametrize('family', ['llama', 'gemma2', 'gpt2'])
def test_packed_examples_see_only_themselves(family):
  cfg = ModelConfig.tiny(family)
  model = Transformer(cfg)
  params = init_params(model, jax.random.PRNGKey(0))
  apply = jax.jit(model.apply)  # op by op, these forwards took 8-12 s per family
  rng = np.random.default_rng(0)
  lengths = (5, 3, 4)
  examples = [rng.integers(3, cfg.vocab_size, size=n).astype(np.int32) for n in lengths]
  width = sum(lengths) + 2
  tokens = np.zeros((1, width), np.int32)
  segments = np.zeros((1, width), np.int32)
  positions = np.zeros((1, width), np.int32)
  start = 0
  for i, ex in enumerate(examples):
    tokens[0, start:start + len(ex)] = ex
    segments[0, start:start + len(ex)] = i + 1
    positions[0, start:start + len(ex)] = np.arange(len(ex))
    start += len(ex)
  packed = np.asarray(apply({'params': params}, jnp.asarray(tokens), jnp.asarray(segments),
                                  jnp.asarray(positions)))
  start = 0
  for ex in examples:
    alone = np.asarray(apply({'params': params}, jnp.asarray(ex[None])))
    np.testing.assert_allclose(packed[0, start:start + len(ex)], alone[0], atol=1e-5)
    start += len(ex)
  # Without the segment ids the later examples would see the earlier ones.
  leaky = np.asarray(apply({'params': params}, jnp.asarray(tokens),
                                 jnp.asarray((segments > 0).astype(np.int32)),
                                 jnp.asarray(positions)))
  assert np.abs(leaky[0, lengths[0]:sum(lengths)] - packed[0, lengths[0]:sum(lengths)]).max() > 1e-3
