"""DPO and DPO-recovery from an SFT policy (the reference is the starting policy).

  python -m deepalign.main --config=configs/dpo.py:toy --workdir=runs/dpo \
      --config.model.init_from=runs/sft_base
  python -m deepalign.main --config=configs/dpo.py:toy_recovery --workdir=runs/dpo_recovery \
      --config.model.init_from=runs/sft_base

Presets: toy (plain DPO on the harm language's preference pairs), toy_recovery (half of each
batch DPO-recovery pairs: chosen = refusal, rejected = harmful continuation after a harmful
prefix; half plain pairs, which keep benign helpfulness), w_tiny, gemma2_2b / llama3_8b /
qwen2_5_7b. The toy presets start from `runs/sft_base` (run configs/sft.py:toy there first).
"""

import ml_collections

from configs import common


def dpo_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'beta': 0.1,
      'loss_type': 'sigmoid',        # 'sigmoid', 'ipo', 'hinge'
      'label_smoothing': 0.0,        # conservative DPO (sigmoid only)
      'rpo_alpha': 0.0,              # + alpha * NLL(chosen) (RPO; TRL rpo_alpha); 0 = off
      'reference': 'on_the_fly',     # or 'precomputed' (one pass before training)
      'recovery_fraction': 0.0,      # share of each batch that is DPO-recovery pairs
      # > 0: each pair's first N tokens (chosen = rejected there, e.g. the prompt) run once per
      # pair, not once per row; a batch whose pairs do not all share N tokens runs in full.
      'shared_prefix_len': 0,
      'depth_distribution': 'qi',
      'max_depth': 100,
      'eval_batches': 2,
      'harm_eval': True,
      'harm_eval_depths': (0, 3, 6),
  })


def _toy(config: ml_collections.ConfigDict) -> None:
  config.model.init_from = 'runs/sft_base'
  # Without the RPO term DPO lowers the chosen responses' likelihood too and benign
  # helpfulness collapses (measured at step 100: 0.97 -> 0.32 plain DPO, -> 0.08 with
  # recovery pairs at beta 0.1); with rpo_alpha=1 harm goes to 0 and helpfulness to 1.0.
  config.dpo.beta = 0.5
  config.dpo.rpo_alpha = 1.0
  config.train.update({'num_steps': 100, 'batch_size': 32, 'log_every': 10, 'eval_every': 50,
                       'checkpoint_every': 50, 'eval_at_start': True})
  config.optimizer.update({'learning_rate': 1e-3, 'warmup_steps': 10, 'schedule': 'constant'})


def _toy_recovery(config: ml_collections.ConfigDict) -> None:
  _toy(config)
  config.dpo.recovery_fraction = 0.5  # plus plain pairs: refusing benign requests is no success


def _w_tiny(config: ml_collections.ConfigDict) -> None:
  common.w_tiny_model(config)
  config.data.update({'max_len': 96, 'max_prompt_len': 32, 'max_response_len': 64})
  config.train.update({'num_steps': 100, 'batch_size': 16, 'log_every': 10, 'eval_every': 50,
                       'checkpoint_every': 50})
  config.optimizer.update({'learning_rate': 1e-5, 'schedule': 'constant', 'weight_decay': 0.0})


def _real(name: str):
  def apply(config: ml_collections.ConfigDict) -> None:
    common.REAL_MODELS[name](config)
    config.data.update({'source': 'tfds', 'builder': 'hh_rlhf', 'builder_config': 'harmless_base',
                        'data_dir': 'data/tfds', 'manual_dir': 'data/manual/hh_rlhf',
                        'max_len': 1024, 'max_prompt_len': 512, 'max_response_len': 512})
    config.dpo.update({'harm_eval': False, 'eval_batches': 8})
    config.train.update({'num_steps': 1000, 'log_every': 10, 'eval_every': 250,
                         'checkpoint_every': 250})
    config.optimizer.update({'learning_rate': 5e-7, 'warmup_steps': 50, 'weight_decay': 0.0})
    if name == 'gemma2_2b':
      # 64 rows x 2048 tokens of activations do not fit a v5e chip (16 GiB) next to the state:
      # two micro-batches of 32 per update (`deepalign.plan`, README 'Real models at scale').
      common.micro_batches(config, 2)
  return apply


PRESETS = {'toy': _toy, 'toy_recovery': _toy_recovery, 'w_tiny': _w_tiny,
           **{name: _real(name) for name in common.REAL_MODELS}}


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  config = common.base_config('dpo')
  config.dpo = dpo_defaults()
  return common.apply_preset(config, preset, 'dpo.py', PRESETS)
