"""Tiny models, states and batches on the synthetic harm language for the RL-step tests."""

import jax
import numpy as np
import optax

from deepalign.envs.harm_language import HarmLanguage, HarmLanguageConfig
from deepalign.models.config import ModelConfig
from deepalign.models.transformer import Transformer, init_params
from deepalign.rollout.sampling_config import SamplingConfig
from deepalign.train.rl.judges import EnvJudge
from deepalign.train.rl.episodes import RolloutSpec
from deepalign.train.rl.state import RLModels, RLState, init_shared_value_head

ENV = HarmLanguage(HarmLanguageConfig(num_harmful_topics=2, num_benign_topics=2, payload_len=3,
                                      refusal_len=2, num_prompt_templates=2,
                                      num_filler_words=1, max_prompt_fillers=1))
HIDDEN = 32


def rl_batch(env: HarmLanguage, n: int, n_recovery: int, seed: int = 0) -> dict:
  """Left-padded prompts and a recovery sub-batch, built straight from the env's records."""
  tok = env.tokenizer
  rows = env.prompt_records(n, seed=seed, harmful_fraction=0.5)
  harmful_rows = [r for r in env.prompt_records(4 * n_recovery + 4, seed=seed + 1)
                  if r['is_harmful']][:n_recovery]
  width = env.max_prompt_words

  def prompts(records):
    toks = np.full((len(records), width), env.pad_id, np.int32)
    mask = np.zeros((len(records), width), np.int32)
    for i, r in enumerate(records):
      ids = tok.encode(r['prompt'])
      toks[i, width - len(ids):] = ids
      mask[i, width - len(ids):] = 1
    return toks, mask

  p, pm = prompts(rows)
  rp, rpm = prompts(harmful_rows)
  resp = np.array([tok.encode(r['target']) for r in harmful_rows], np.int32)
  return {'prompt_tokens': p, 'prompt_mask': pm,
          'is_harmful': np.array([r['is_harmful'] for r in rows]),
          'recovery_prompt_tokens': rp, 'recovery_prompt_mask': rpm,
          'recovery_harmful_response': resp,
          'recovery_harmful_response_len': np.full((n_recovery,), resp.shape[1], np.int32)}


def tiny(head: str) -> Transformer:
  return Transformer(ModelConfig(vocab_size=ENV.vocab_size, hidden_size=HIDDEN, num_layers=1,
                                 num_heads=2, intermediate_size=64, max_position_embeddings=64,
                                 head=head, pad_id=ENV.pad_id, bos_id=ENV.bos_id,
                                 eos_id=ENV.eos_id))


def rollout_spec(**overrides) -> RolloutSpec:
  kwargs = dict(sampling=SamplingConfig(max_new_tokens=ENV.max_response_words, temperature=0.7,
                                        eos_id=ENV.eos_id, pad_id=ENV.pad_id),
                recovery_coef=1.0, depth_distribution='uniform', max_depth=4)
  kwargs.update(overrides)
  return RolloutSpec(**kwargs)


def make_state(kl_coef: float, shared_value: bool = False, seed: int = 0,
               with_value: bool = True, lr: float = 1e-3):
  """(models, tx, state) with random tiny policy / value / reward models."""
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  policy, reward = tiny('lm'), tiny('score')
  value_model = tiny('value') if with_value and not shared_value else None
  value_params = None
  if with_value:
    value_params = (init_shared_value_head(HIDDEN, keys[1]) if shared_value
                    else init_params(value_model, keys[1]))
  models = RLModels(policy=policy, reward=reward, judge=EnvJudge(ENV), value=value_model)
  tx = optax.adamw(lr, weight_decay=0.0)
  policy_params = init_params(policy, keys[0])
  state = RLState.create(policy=policy_params, reference=policy_params,
                         reward=init_params(reward, keys[2]), judge={}, tx=tx, rng=keys[3],
                         kl_coef=kl_coef, value=value_params)
  return models, tx, state
