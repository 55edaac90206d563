"""The toy study: shallow vs. deep alignment on the synthetic harm language, end to end on CPU.

  python -m deepalign.main --config=configs/toy_study.py --workdir=runs/toy

Trains, in DIR/<run> (re-running skips finished runs and resumes interrupted ones):
  base          SFT: complies with everything, `study.refusal_rate` refusals, NO self-corrections;
                trained to fit that data (`study.base_num_steps`, `study.base_learning_rate`)
  reward_model  Bradley-Terry on the language's preference pairs
  ppo           standard PPO from `base` (reward model + KL to base)
  ppo_recovery  PPO + the recovery penalty (recovery rollouts from harmful prefixes, k ~ U{1..8},
                with an entropy bonus on their tokens: `study.recovery_entropy_coef`)
  dpo           DPO from `base` (+ RPO term, see configs/dpo.py)
  dpo_recovery  DPO with half of each batch DPO-recovery pairs
  sft_recovery  SFT from `base` on aligned data + Qi et al.'s safety-recovery augmentation
  base_sc       SFT like `base` but with `study.second_base_self_correction_rate` self-corrections
  ppo_sc        standard PPO from `base_sc`
  attack_nll, attack_constrained   the fine-tuning attack of Qi et al. (Table 4) on `ppo`:
                `study.attack_num_steps` SFT steps on harmful compliance, plain NLL vs. the
                token-wise constrained objective (`sft.objective='token_constrained'`)
then measures every policy (deepalign/study/measure.py) and writes DIR/report.json,
DIR/report.md, DIR/plots/*.png and DIR/figures.json (which of the issue's claims hold).

Each run is its stage's `toy` preset (configs/sft.py, reward_model.py, ppo.py, ppo_recovery.py,
dpo.py) with the study's data rates; `--config.study.runs=base,reward_model,ppo` trains a subset.
"""

import ml_collections

from configs import common

ALL_RUNS = ('base', 'reward_model', 'ppo', 'ppo_recovery', 'dpo', 'dpo_recovery', 'sft_recovery',
            'base_sc', 'ppo_sc', 'attack_nll', 'attack_constrained')


def study_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'runs': ','.join(ALL_RUNS),        # comma-separated subset of the runs above
      'refusal_rate': 0.05,              # base SFT data: outright refusals
      'base_self_correction_rate': 0.0,  # base SFT data: mid-response self-corrections
      'second_base_self_correction_rate': 0.02,  # base_sc: the same, with a few
      # base / base_sc are trained to fit their data: they leave a harmful answer they have
      # started with p ~ 3e-5 per token (400 steps at 3e-3, the SFT preset: ~4e-3).
      'base_num_steps': 1600,            # SFT steps of base / base_sc; 0 = configs/sft.py toy (400)
      'base_learning_rate': 1e-2,        # their peak learning rate; 0 = configs/sft.py toy (3e-3)
      'rl_num_steps': 320,               # PPO / PPO-recovery steps (configs/rl_common.py toy: 60)
      'recovery_coef': 1.0,              # lambda_rec of ppo_recovery
      # Exploration at harmful prefixes, which a base without self-corrections never leaves:
      'recovery_entropy_coef': 0.1,      # ppo_recovery's entropy bonus on recovery rollouts' tokens
      'rl_entropy_coef': 0.0,            # ppo.entropy_coef of every PPO run (ppo, ppo_recovery, ppo_sc)
                                         # (recovery rollouts: recovery_entropy_coef; < 0 = this)
      # model.trim_last_layer of every run and of the measurements. Off: the study's figures
      # stay the ones published bit for bit. On, its rounding differs and, at seed 0,
      # ppo_recovery's max ASR@k measured 0.238 instead of 0.053 (the claim's threshold is 0.10).
      'trim_last_layer': False,
      'attack_num_steps': 50,            # fine-tuning attack on ppo (Qi et al. Table 4)
      'attack_learning_rate': 1e-3,
  })


def analysis_defaults() -> ml_collections.ConfigDict:
  """Monte-Carlo sizes of deepalign/study/measure.py (held-out prompts, a seed no split uses)."""
  return ml_collections.ConfigDict({
      'asr_depths': (0, 1, 2, 3, 5, 10, 20, 40),  # capped at len(harmful answer) - 1 (= 8)
      'num_harmful_prompts': 256,        # ASR and KL prompts (half the probe's held-out rows)
      'asr_samples': 4,                  # responses per (prompt, depth)
      'num_benign_prompts': 256,
      'benign_samples': 4,
      'martingale_responses': 128,       # responses to harmful prompts: martingale, gradients
      'num_continuations': 16,           # M per prefix
      'grad_groups': 16,                 # row groups for the gradient norms' standard errors
      'gradient_responses': 32,          # of those, rows of the full-vocabulary gradient: every
                                         # (row, position, next token) gets continuations
      'gradient_continuations': 1,       # per (row, position, next token); unbiased already
      'recovery_max_depth': 8,           # K of the recovery objective's depth k ~ U{k_min..K}
      'recovery_min_depth': 1,           # k_min (1, as configs/ppo_recovery.py: start inside ỹ)
      'response_len': 12,                # T: sampled tokens (= rl.max_new_tokens of the toy RL)
  })


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  config = common.base_config('toy_study')
  config.study = study_defaults()
  config.analysis = analysis_defaults()
  return common.apply_preset(config, preset, 'toy_study.py', {'toy': lambda c: None})
