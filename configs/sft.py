"""SFT: masked next-token loss on responses, optionally with Qi et al.'s safety augmentation.

  python -m deepalign.main --config=configs/sft.py:toy --workdir=runs/sft_base
  python -m deepalign.main --config=configs/sft.py:toy_recovery --workdir=runs/sft_deep

Presets: toy (the "base" model of the synthetic harm language: complies with everything,
5% refusals, 5% self-corrections), toy_recovery (aligned data + 20% safety-recovery rows),
w_tiny (W_TINY.md shapes), gemma2_2b (TPU v5e-8) / llama3_8b / qwen2_5_7b (v5p-32): HF checkpoints,
float32 master weights, bfloat16 compute, fsdp over the slice (configs/common.py).
"""

import ml_collections

from configs import common


def sft_defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'objective': 'nll',            # 'nll' or 'token_constrained' (Qi et al. Sec. 4.2)
      'records': 'sft',              # harm_language: 'sft' (base behaviour) or 'sft_aligned'
      'safety_fraction': 0.0,        # share of every batch given to safety-recovery rows
      'depth_distribution': 'qi',    # prefix depth k: 0 w.p. 0.5, else U{1..max_depth}
      'max_depth': 100,
      'eval_batches': 2,
      'harm_eval': True,             # harm@k / helpfulness by sampling (harm_language only)
      'harm_eval_depths': (0, 3, 6),
  })


def _toy(config: ml_collections.ConfigDict) -> None:
  config.train.update({'num_steps': 400, 'batch_size': 32, 'log_every': 20, 'eval_every': 200,
                       'checkpoint_every': 200})
  config.optimizer.update({'learning_rate': 3e-3, 'warmup_steps': 20, 'weight_decay': 0.0})


def _toy_recovery(config: ml_collections.ConfigDict) -> None:
  _toy(config)
  config.sft.records = 'sft_aligned'
  config.sft.safety_fraction = 0.2


def _w_tiny(config: ml_collections.ConfigDict) -> None:
  common.w_tiny_model(config)
  config.data.update({'max_len': 96, 'max_prompt_len': 32, 'max_response_len': 64})
  config.train.update({'num_steps': 200, 'batch_size': 16, 'log_every': 10, 'eval_every': 100,
                       'checkpoint_every': 100})
  config.optimizer.update({'learning_rate': 1e-3, 'warmup_steps': 20})


def _real(name: str):
  def apply(config: ml_collections.ConfigDict) -> None:
    common.REAL_MODELS[name](config)
    config.data.update({'source': 'tfds', 'builder': 'sft_conversations', 'data_dir': 'data/tfds',
                        'manual_dir': 'data/manual/sft_conversations', 'max_len': 2048,
                        'max_prompt_len': 1024, 'max_response_len': 1024})
    config.sft.update({'safety_fraction': 0.2, 'harm_eval': False, 'eval_batches': 8})
    config.train.update({'num_steps': 2000, 'log_every': 10, 'eval_every': 500,
                         'checkpoint_every': 500})
    config.optimizer.update({'learning_rate': 2e-5, 'warmup_steps': 100, 'weight_decay': 0.0})
    if name == 'gemma2_2b':
      # 64 rows x 2048 tokens of activations do not fit a v5e chip (16 GiB) next to the state:
      # two micro-batches of 32 per update (`deepalign.plan`, README 'Real models at scale').
      common.micro_batches(config, 2)
  return apply


PRESETS = {'toy': _toy, 'toy_recovery': _toy_recovery, 'w_tiny': _w_tiny,
           **{name: _real(name) for name in common.REAL_MODELS}}


def get_config(preset: str | None = None) -> ml_collections.ConfigDict:
  config = common.base_config('sft')
  config.sft = sft_defaults()
  return common.apply_preset(config, preset, 'sft.py', PRESETS)
