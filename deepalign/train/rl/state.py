"""The state of the fused RL steps (PPO, GRPO) and the models they run, as one pytree.

Trainable params (`params['policy']`, and `params['value']` for PPO) share one optax state;
the reference policy, the reward model and the judge are frozen but live in the same
pytree, so one `jax.jit` with the state donated holds every buffer of an RL iteration.
"""

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from deepalign.models.transformer import Transformer
from deepalign.objectives import kl as kl_lib
from deepalign.train.rl.episodes import JudgeFn

PyTree = Any


@dataclasses.dataclass(frozen=True)
class RLModels:
  """The (static, hashable) modules of an RL step.

  policy: LM head; the reference uses the same module with frozen params.
  value: a `head='value'` Transformer, or None for a value head on the policy's trunk
    (then `params['value']` is `{'kernel': [D, 1]}` applied to the policy's final hidden states).
  reward: a `head='score'` Transformer (the Bradley-Terry reward model).
  judge: the harm judge, `judge(judge_params, prompt, prompt_mask, response, response_mask)`.
  """
  policy: Transformer
  reward: Transformer
  judge: JudgeFn
  value: Transformer | None = None


class RLState(flax.struct.PyTreeNode):
  """step, the base key (the key of step s is fold_in(rng, s), so resuming replays exactly),
  trainable params and their optimizer state, frozen params, and the KL controller."""
  step: jax.Array
  rng: jax.Array
  params: PyTree
  opt_state: optax.OptState
  frozen: PyTree
  kl_ctl: kl_lib.KLControllerState

  @classmethod
  def create(cls, *, policy: PyTree, reference: PyTree, reward: PyTree, judge: PyTree,
             tx: optax.GradientTransformation, rng: jax.Array, kl_coef: float,
             value: PyTree | None = None) -> 'RLState':
    params = {'policy': policy} if value is None else {'policy': policy, 'value': value}
    # The step donates the state: the reference usually starts as the policy's own arrays,
    # and one buffer cannot be donated twice.
    reference = jax.tree.map(jnp.copy, reference)
    return cls(step=jnp.zeros((), jnp.int32), rng=rng, params=params,
               opt_state=tx.init(params),
               frozen={'reference': reference, 'reward': reward, 'judge': judge},
               kl_ctl=kl_lib.kl_controller_init(kl_coef))


def init_shared_value_head(hidden_size: int, rng: jax.Array, std: float = 0.02) -> PyTree:
  """Params of a value head on the policy trunk: {'kernel': [D, 1]}."""
  return {'kernel': std * jax.random.normal(rng, (hidden_size, 1), jnp.float32)}
