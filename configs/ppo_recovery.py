"""PPO with the recovery penalty: extra rollouts from harmful prefixes of random depth
k ~ U{1..8}, reward -lambda_rec * h, so the policy gets gradient at every position (DESIGN.md
"Theory"). k starts at 1: a k = 0 rollout is an ordinary rollout on a harmful prompt, which the
standard part of the objective already has.

  python -m deepalign.main --config=configs/ppo_recovery.py:toy --workdir=runs/ppo_recovery
  python -m deepalign.main --config=configs/ppo_recovery.py:toy --workdir=runs/ppo_rec_geo \
      --config.recovery.depth_distribution=geometric --config.recovery.depth_p=0.2
"""

from configs import rl_common


def _recovery(config) -> None:
  config.recovery.update({'coef': 1.0, 'batch_size': max(config.train.batch_size // 2, 1),
                          'depth_distribution': 'uniform', 'max_depth': 8, 'min_depth': 1})


def get_config(preset: str | None = None):
  return rl_common.rl_config('ppo', preset, 'ppo_recovery.py', _recovery)
