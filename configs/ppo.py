"""Standard RLHF: PPO against the reward model with a KL penalty to the SFT policy.

  python -m deepalign.main --config=configs/ppo.py:toy --workdir=runs/ppo
  python -m deepalign.main --config=configs/ppo.py:toy --workdir=runs/ppo_kl01 --config.ppo.kl_coef=0.1

Presets: toy (from runs/sft_base and runs/reward_model), w_tiny (W_TINY.md shapes),
gemma2_2b (TPU v5e-8) / llama3_8b / qwen2_5_7b (v5p-32): HF checkpoints, float32 master weights,
bfloat16 compute, fsdp over the slice (configs/common.py); `python -m deepalign.plan` checks they fit.
"""

from configs import rl_common


def get_config(preset: str | None = None):
  return rl_common.rl_config('ppo', preset, 'ppo.py')
