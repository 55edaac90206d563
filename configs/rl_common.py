"""Defaults and presets shared by the RL stages (configs/ppo.py, ppo_recovery.py, grpo.py).

Every RL config carries all of `rl`, `ppo`, `grpo` and `recovery`, so an override such as
`--config.recovery.coef=2` means the same thing in every RL file.
"""

from typing import Callable

import ml_collections

from configs import common

ConfigDict = ml_collections.ConfigDict


def rl_defaults() -> ConfigDict:
  """What PPO and GRPO share: where the models come from, sampling, eval."""
  return ConfigDict({
      'reward_from': '',          # reward-model stage workdir (its export/) or HF *ForSequenceClassification dir
      'judge': 'env',             # 'env' (exact judge of the synthetic language) or a classifier checkpoint dir
      'max_new_tokens': 16,
      'temperature': 1.0,         # applied on every log-prob path (rollout, old, reference, training)
      'top_k': 0,
      'top_p': 1.0,
      'stop_at_eos': True,
      'missing_eos_penalty': 0.0,  # subtracted from the score of a response without EOS; 0 = off
      'harm_eval': True,          # ASR@k / helpfulness by sampling (harm_language only)
      'harm_eval_depths': (0, 3, 6),
      'eval_batches': 4,
      # Storage dtype of the frozen models (reference, reward model, judge); '' = model.param_dtype.
      # 'bfloat16' halves them at scale (they are never updated, so no rounding accumulates).
      'frozen_param_dtype': '',
      # The judge on ordinary rows too (for the harm/ordinary metrics); False = recovery rows only,
      # one classifier forward fewer over the ordinary rollouts (real presets).
      'judge_ordinary': True,
  })


def ppo_defaults() -> ConfigDict:
  """TRL's PPOConfig defaults where it has one."""
  return ConfigDict({
      'value_init': 'reward',     # 'reward' (critic from the reward model, as TRL), 'policy', 'shared' (head on the trunk)
      'kl_coef': 0.05,
      'kl_estimator': 'k1',       # 'k1', 'k2', 'k3'
      'kl_penalty_in': 'reward',  # 'reward' (per-token penalty, Ziegler et al.) or 'loss'
      'adaptive_kl_target': 0.0,  # 0 = fixed coefficient; > 0 = Ziegler's adaptive controller
      'adaptive_kl_horizon': 10000.0,
      'gamma': 1.0,
      'lam': 0.95,
      'whiten_rewards': False,
      'whiten_advantages': True,
      'score_clip': 0.0,          # 0 = off
      'epochs': 4,
      'minibatches': 2,
      'clip_eps': 0.2,
      'value_clip_eps': 0.2,
      'vf_coef': 0.1,
      'entropy_coef': 0.0,
      'aggregation': 'token_mean',  # 'token_mean', 'sequence_mean', 'token_sum_normalized'
  })


def grpo_defaults() -> ConfigDict:
  """TRL's GRPOConfig defaults where it has one."""
  return ConfigDict({
      'group_size': 4,
      'beta': 0.04,               # k3 KL to the reference, in the loss
      'clip_eps': 0.2,
      'clip_eps_high': 0.0,       # 0 = clip_eps (DAPO's clip-higher when larger)
      'scale_by_std': True,       # False = Dr. GRPO
      'epochs': 1,
      'minibatches': 1,
      'aggregation': 'sequence_mean',  # original GRPO; 'token_mean' = DAPO
  })


def recovery_defaults() -> ConfigDict:
  """The recovery penalty: extra rollouts from harmful prefixes, reward -coef * h."""
  return ConfigDict({
      'coef': 0.0,                # lambda_rec; 0 = standard RLHF
      'batch_size': 0,            # recovery rollouts per step (harmful prompts); 0 = none
      'depth_distribution': 'uniform',  # 'uniform', 'geometric', 'fixed', 'qi'
      'max_depth': 8,             # K: depths 0..K, capped by the harmful response's length
      'min_depth': 0,             # k < min_depth get p(k) = 0 (1: every rollout starts inside ỹ)
      'entropy_coef': -1.0,       # PPO entropy bonus on recovery rollouts' tokens; < 0 = ppo.entropy_coef
      'depth_p': 0.3,             # geometric
      'depths': (),               # fixed
  })


def _toy(config: ConfigDict) -> None:
  config.model.init_from = 'runs/sft_base'
  config.rl.reward_from = 'runs/reward_model'
  config.train.update({'num_steps': 60, 'batch_size': 32, 'log_every': 5, 'eval_every': 30,
                       'checkpoint_every': 30})
  config.optimizer.update({'learning_rate': 1e-4, 'schedule': 'constant', 'warmup_steps': 0})
  config.rl.max_new_tokens = 12


def _w_tiny(config: ConfigDict) -> None:
  """The PPO iteration of W_TINY.md (random weights: pass HF dirs of W-tiny-shaped models)."""
  common.w_tiny_model(config)
  config.rl.update({'max_new_tokens': 64, 'stop_at_eos': False, 'harm_eval': False})
  config.ppo.update({'epochs': 1, 'minibatches': 2, 'kl_coef': 0.05})
  config.data.update({'max_len': 96, 'max_prompt_len': 32, 'max_response_len': 64})
  config.train.update({'num_steps': 20, 'batch_size': 16, 'log_every': 1, 'eval_every': 0,
                       'checkpoint_every': 10})
  config.optimizer.update({'learning_rate': 1e-5, 'schedule': 'constant', 'grad_clip_norm': 0.0})


def _real(name: str) -> Callable[[ConfigDict], None]:
  def apply(config: ConfigDict) -> None:
    common.REAL_MODELS[name](config)
    config.model.init_from = 'runs/sft'  # the SFT stage of the same preset
    config.rl.update({'reward_from': 'runs/reward_model', 'judge': 'checkpoints/harm-classifier',
                      'max_new_tokens': 256, 'harm_eval': False,
                      'frozen_param_dtype': 'bfloat16', 'judge_ordinary': False})
    config.data.update({'source': 'tfds', 'builder': 'adv_bench', 'data_dir': 'data/tfds',
                        'manual_dir': 'data/manual/adv_bench', 'max_len': 768,
                        'max_prompt_len': 512, 'max_response_len': 256})
    config.train.update({'num_steps': 500, 'log_every': 1, 'eval_every': 0,
                         'checkpoint_every': 50})
    config.optimizer.update({'learning_rate': 1e-6, 'schedule': 'constant', 'warmup_steps': 0})
    if name == 'gemma2_2b':
      # v5e chips have 16 GiB: a separate 2.6 B critic with its AdamW moments (31 GB in float32)
      # does not fit next to the policy; a value head on the policy's trunk does
      # (`python -m deepalign.plan`, README 'Real models at scale').
      config.ppo.value_init = 'shared'
  return apply


PRESETS: dict[str, Callable[[ConfigDict], None]] = {
    'toy': _toy, 'w_tiny': _w_tiny, **{name: _real(name) for name in common.REAL_MODELS}}


def rl_config(stage: str, preset: str | None, file: str,
              extra: Callable[[ConfigDict], None] | None = None) -> ConfigDict:
  """The config of an RL stage file: shared defaults, the preset, then the file's own changes."""
  config = common.base_config(stage)
  config.rl = rl_defaults()
  config.ppo = ppo_defaults()
  config.grpo = grpo_defaults()
  config.recovery = recovery_defaults()
  common.apply_preset(config, preset, file, PRESETS)
  if extra is not None:
    extra(config)
  return config
