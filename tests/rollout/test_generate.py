"""generate: log-probs, forced prefixes, EOS masks, top-k / top-p support, determinism, jit."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign import models, rollout
from deepalign.errors import UserError
from deepalign.models import ModelConfig, Transformer
from deepalign.rollout import SamplingConfig


def _random_params(model: Transformer, seed: int = 0, std: float = 0.3):
  """Random parameters (numpy; shapes from an abstract init, so no init compile)."""
  shapes = jax.eval_shape(lambda: models.init_params(model, jax.random.key(0)))
  rng = np.random.default_rng(seed)
  base = 0.0 if model.config.norm_scale_plus_one else 1.0

  def make(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.standard_normal(leaf.shape)
    value = base + 0.2 * noise if 'norm' in name else std * noise
    return jnp.asarray(value, leaf.dtype)
  return jax.tree_util.tree_map_with_path(make, shapes)


def _prompts(cfg: ModelConfig, pads=(0, 2, 4, 1), length=6, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(3, cfg.vocab_size, size=(len(pads), length))
  mask = (np.arange(length)[None, :] >= np.array(pads)[:, None]).astype(np.int32)
  return jnp.asarray(tokens * mask, jnp.int32), jnp.asarray(mask)


def _recomputed_logits(model, params, prompt, prompt_mask, out):
  """Full-forward logits [B, N, V] that predict each response token."""
  tokens = jnp.concatenate([prompt, out.tokens], axis=1)
  mask = jnp.concatenate([prompt_mask, out.response_mask], axis=1)
  logits = jax.jit(model.apply)({'params': params}, tokens, mask)
  return logits[:, prompt.shape[1] - 1:-1]


@pytest.mark.parametrize('family', ['llama', 'gemma2'])
def test_logprobs_match_recomputation_and_forced_tokens_are_verbatim(family):
  cfg = ModelConfig.tiny(family)
  model = Transformer(cfg)
  params = _random_params(model)
  prompt, prompt_mask = _prompts(cfg)
  forced = jnp.asarray(np.random.default_rng(5).integers(3, cfg.vocab_size, size=(4, 3)), jnp.int32)
  forced_len = jnp.array([0, 3, 1, 2])
  config = SamplingConfig(max_new_tokens=7, temperature=0.7, eos_id=2, pad_id=0)
  out = rollout.generate(model, params, prompt, prompt_mask, jax.random.key(0), config=config,
                         forced_tokens=forced, forced_len=forced_len)
  assert out.tokens.shape == out.logprobs.shape == (4, 7)
  for i, k in enumerate(np.asarray(forced_len)):
    np.testing.assert_array_equal(out.tokens[i, :k], forced[i, :k])
    np.testing.assert_array_equal(out.generated_mask[i, :k], 0)
  np.testing.assert_array_equal(out.response_mask[1, :3], 1)  # forced tokens always exist
  np.testing.assert_array_equal(
      out.generated_mask, out.response_mask * (np.arange(7)[None] >= forced_len[:, None]))
  logits = _recomputed_logits(model, params, prompt, prompt_mask, out)
  expected = rollout.token_logprobs(logits, out.tokens, 0.7)
  real = np.asarray(out.response_mask, bool)
  np.testing.assert_allclose(np.asarray(out.logprobs)[real], np.asarray(expected)[real],
                             atol=1e-5, rtol=1e-5)
  assert np.all(np.asarray(out.logprobs)[~real] == 0)


def test_eos_stops_each_row_and_masks_the_rest():
  cfg = ModelConfig.tiny('llama', vocab_size=8)  # EOS (2) is sampled often
  model = Transformer(cfg)
  params = _random_params(model, std=0.05)
  prompt, prompt_mask = _prompts(cfg, pads=(0,) * 16, length=3)
  config = SamplingConfig(max_new_tokens=12, eos_id=2, pad_id=0, temperature=1.0)
  out = jax.device_get(rollout.generate(model, params, prompt, prompt_mask, jax.random.key(3),
                                        config=config))
  ends = []
  for row in range(16):
    eos = np.flatnonzero(out.tokens[row] == 2)
    end = eos[0] + 1 if len(eos) else 12
    ends.append(end)
    assert out.lengths[row] == end and out.ended_with_eos[row] == bool(len(eos))
    np.testing.assert_array_equal(out.response_mask[row], np.arange(12) < end)
    np.testing.assert_array_equal(out.generated_mask[row], out.response_mask[row])
    np.testing.assert_array_equal(out.tokens[row, end:], 0)
  assert len(set(ends)) >= 3 and min(ends) < 12  # rows end at different steps

  exact = dataclasses.replace(config, stop_at_eos=False)
  out = jax.device_get(rollout.generate(model, params, prompt, prompt_mask, jax.random.key(3),
                                        config=exact))
  np.testing.assert_array_equal(out.lengths, 12)
  np.testing.assert_array_equal(out.response_mask, 1)
  assert np.any(out.tokens[:, :-1] == 2)  # EOS was sampled mid-response and did not stop it


def test_any_of_several_eos_ids_stops_a_row_even_when_one_is_the_pad_id():
  """Llama-3-Instruct / Gemma-it stop on eos or end-of-turn; pad may be one of them."""
  cfg = ModelConfig.tiny('llama', vocab_size=8)
  model = Transformer(cfg)
  params = _random_params(model, std=0.05)
  prompt, prompt_mask = _prompts(cfg, pads=(0,) * 16, length=3)
  forced = jnp.zeros((16, 2), jnp.int32).at[0].set(jnp.array([5, 0])).at[1].set(jnp.array([3, 2]))
  forced_len = jnp.zeros((16,), jnp.int32).at[0].set(1).at[1].set(2)
  config = SamplingConfig(max_new_tokens=12, eos_id=(2, 5), pad_id=5, temperature=1.0)
  out = jax.device_get(rollout.generate(model, params, prompt, prompt_mask, jax.random.key(3),
                                        config=config, forced_tokens=forced, forced_len=forced_len))
  assert (out.lengths[0], out.lengths[1]) == (1, 2) and out.ended_with_eos[:2].all()
  enders = set()
  for row in range(16):
    eos = np.flatnonzero(np.isin(out.tokens[row], (2, 5)))
    end = eos[0] + 1 if len(eos) else 12
    assert out.lengths[row] == end and out.ended_with_eos[row] == bool(len(eos))
    np.testing.assert_array_equal(out.response_mask[row], np.arange(12) < end)
    np.testing.assert_array_equal(out.tokens[row, end:], 5)
    enders.add(int(out.tokens[row, end - 1]) if len(eos) else None)
  assert {2, 5} <= enders  # sampled rows ended on each id


def test_eos_id_is_one_id_or_several_and_always_a_tuple():
  assert SamplingConfig(eos_id=2) == SamplingConfig(eos_id=(2,))
  assert SamplingConfig(eos_id=[128001, np.int64(128009)]).eos_id == (128001, 128009)
  is_eos = SamplingConfig(eos_id=(2, 5)).is_eos(jnp.arange(7))
  np.testing.assert_array_equal(is_eos, [0, 0, 1, 0, 0, 1, 0])
  for bad in (None, (), (2, None), -1, 'eos'):
    with pytest.raises(UserError, match='eos_id'):
      SamplingConfig(eos_id=bad)


@pytest.mark.parametrize('config', [SamplingConfig(max_new_tokens=6, top_k=3, stop_at_eos=False),
                                    SamplingConfig(max_new_tokens=6, top_p=0.3, temperature=0.8,
                                                   stop_at_eos=False)])
def test_top_k_and_top_p_restrict_the_support(config):
  cfg = ModelConfig.tiny('qwen2')
  model = Transformer(cfg)
  params = _random_params(model, std=0.1)
  prompt, prompt_mask = _prompts(cfg, pads=(0, 1, 2, 3, 0, 1, 2, 3))
  out = rollout.generate(model, params, prompt, prompt_mask, jax.random.key(7), config=config)
  logits = np.asarray(_recomputed_logits(model, params, prompt, prompt_mask, out), np.float64)
  logits = logits / config.temperature
  order = np.argsort(-logits, axis=-1)
  rank = np.argmax(order == np.asarray(out.tokens)[..., None], axis=-1)  # 0 = most likely
  if config.top_k:
    assert rank.max() < config.top_k and rank.max() > 0
  else:
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    sorted_probs = np.take_along_axis(probs, order, axis=-1)
    mass_before = np.take_along_axis(np.cumsum(sorted_probs, -1) - sorted_probs,
                                     rank[..., None], axis=-1)[..., 0]
    assert np.all(mass_before < config.top_p + 1e-6)
    assert rank.max() > 0  # the nucleus held more than one token somewhere


def test_greedy_follows_the_argmax():
  cfg = ModelConfig.tiny('gpt2')
  model = Transformer(cfg)
  params = _random_params(model, std=0.1)
  prompt, prompt_mask = _prompts(cfg)
  config = SamplingConfig(max_new_tokens=5, greedy=True, stop_at_eos=False)
  out = rollout.generate(model, params, prompt, prompt_mask, jax.random.key(0), config=config)
  logits = _recomputed_logits(model, params, prompt, prompt_mask, out)
  np.testing.assert_array_equal(out.tokens, jnp.argmax(logits, axis=-1))
  other = rollout.generate(model, params, prompt, prompt_mask, jax.random.key(9), config=config)
  np.testing.assert_array_equal(out.tokens, other.tokens)


def test_same_rng_same_tokens_and_works_inside_jit():
  cfg = ModelConfig.tiny('llama')
  model = Transformer(cfg)
  params = _random_params(model, std=0.05)
  prompt, prompt_mask = _prompts(cfg)
  config = SamplingConfig(max_new_tokens=8, stop_at_eos=False)
  sample = lambda p, key: rollout.generate(model, p, prompt, prompt_mask, key, config=config)
  a, b = sample(params, jax.random.key(1)), sample(params, jax.random.key(1))
  c = sample(params, jax.random.key(2))
  np.testing.assert_array_equal(a.tokens, b.tokens)
  assert np.any(np.asarray(a.tokens) != np.asarray(c.tokens))
  assert len(np.unique(np.asarray(a.tokens))) > 8  # rows are not copies of each other
  inner = jax.jit(lambda p, key: sample(p, key).tokens)(params, jax.random.key(1))
  np.testing.assert_array_equal(inner, a.tokens)


def test_token_logprobs_is_the_tempered_log_softmax():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 11)) * 3
  targets = jax.random.randint(jax.random.key(1), (2, 3), 0, 11)
  for temperature in (1.0, 0.5):
    ref = jnp.take_along_axis(jax.nn.log_softmax(logits / temperature), targets[..., None], -1)
    np.testing.assert_allclose(rollout.token_logprobs(logits, targets, temperature), ref[..., 0],
                               atol=1e-5)
  out = rollout.token_logprobs(logits.astype(jnp.bfloat16), targets)
  assert out.dtype == jnp.float32


def test_filters():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda z: np.asarray(z[0] > -1e29)
  np.testing.assert_array_equal(kept(rollout.top_k_filter(logits, 2)), [1, 1, 0, 0, 0])
  np.testing.assert_array_equal(kept(rollout.top_k_filter(logits, 0)), [1, 1, 1, 1, 1])
  np.testing.assert_array_equal(kept(rollout.top_p_filter(logits, 0.5)), [1, 0, 0, 0, 0])
  np.testing.assert_array_equal(kept(rollout.top_p_filter(logits, 0.75)), [1, 1, 1, 0, 0])
  np.testing.assert_array_equal(kept(rollout.top_p_filter(logits, 0.01)), [1, 0, 0, 0, 0])
  shuffled = logits[:, ::-1]
  np.testing.assert_array_equal(kept(rollout.top_p_filter(shuffled, 0.75)), [0, 0, 1, 1, 1])


def test_user_errors():
  for bad in (dict(max_new_tokens=0), dict(temperature=0.0), dict(top_p=1.5), dict(top_k=-1)):
    with pytest.raises(UserError, match=next(iter(bad))):
      SamplingConfig(**bad)
  cfg = ModelConfig.tiny('llama', head='score')
  model = Transformer(cfg)
  prompt, mask = _prompts(cfg)
  with pytest.raises(UserError, match='head'):
    rollout.generate(model, _random_params(model), prompt, mask, jax.random.key(0))
  lm = Transformer(ModelConfig.tiny('llama'))
  with pytest.raises(UserError, match='forced_tokens'):
    rollout.generate(lm, _random_params(lm), prompt, mask, jax.random.key(0),
                     forced_tokens=jnp.zeros((2, 3), jnp.int32), forced_len=jnp.zeros(2, jnp.int32))


def test_decode_phases_cover_every_step_with_enough_cache():
  from deepalign.rollout.generate import decode_phases
  for p, n in [(5, 1), (5, 2), (3, 15), (8, 16), (32, 64), (4, 300)]:
    phases = decode_phases(p, n)
    assert phases[-1][0] == n and len(phases) <= 4
    start = 1
    for t_end, slots in phases:
      assert slots >= p + t_end - 1 >= p  # step t < t_end writes slot P + t - 1
      assert t_end >= start
      start = t_end
    assert phases[-1][1] == p + max(n - 1, 0)
    assert [s for _, s in phases] == sorted(s for _, s in phases)


def test_phased_decode_matches_the_full_forward():
  """40 tokens: the decode loop runs in 2 phases on a growing cache; its log-probs are the
  full forward's and greedy tokens its argmax, across the phase boundary."""
  cfg = ModelConfig.tiny('gemma2')  # sliding-window layers too
  model = Transformer(cfg)
  params = _random_params(model, std=0.1)
  prompt, prompt_mask = _prompts(cfg)
  for config in (SamplingConfig(max_new_tokens=40, temperature=0.8, stop_at_eos=False),
                 SamplingConfig(max_new_tokens=40, greedy=True, stop_at_eos=False)):
    out = rollout.generate(model, params, prompt, prompt_mask, jax.random.key(2), config=config)
    logits = _recomputed_logits(model, params, prompt, prompt_mask, out)
    want = rollout.token_logprobs(logits, out.tokens, config.temperature)
    np.testing.assert_allclose(out.logprobs, want, rtol=1e-4, atol=1e-4)
    if config.greedy:
      np.testing.assert_array_equal(out.tokens, jnp.argmax(logits, axis=-1))


def test_the_samplers_gathered_logit_is_the_masked_sums():
  """generate picks its tokens' logits by a gather on one device; training by a masked sum: the
  same numbers, filtered (-1e30) entries included."""
  from deepalign.rollout.logprobs import picked_logit
  rng = np.random.default_rng(0)
  z = rng.standard_normal((3, 5, 50)).astype(np.float32)
  z[0, :, :7] = -1e30
  targets = rng.integers(0, 50, (3, 5))
  targets[0, 0] = 3  # a filtered token
  np.testing.assert_array_equal(picked_logit(jnp.asarray(z), jnp.asarray(targets), gather=True),
                                picked_logit(jnp.asarray(z), jnp.asarray(targets)))
