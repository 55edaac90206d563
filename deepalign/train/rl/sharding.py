"""Placing an RL state and batch on a device mesh from the models' logical axis names.

Every model's params (policy, reference, value, reward, judge) are sharded by the config's
logical-axis rules (deepalign/parallel/rules.py); the optimizer state mirrors the params it
belongs to; scalars (step, key, KL coefficient) are replicated. The jitted step then runs as
one SPMD program over the mesh: XLA inserts the collectives.
"""

from typing import Any

import jax
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from deepalign import parallel
from deepalign.models.axes import logical_axes
from deepalign.train.rl.state import RLModels, RLState

PyTree = Any


def _axes_of(model: Any, params: PyTree) -> PyTree:
  """Logical axes of a model's params; None (replicated) for anything that is not a model."""
  if model is None:
    return jax.tree.map(lambda _: None, params)
  return logical_axes(model)


def rl_param_axes(models: RLModels, state: RLState) -> tuple[PyTree, PyTree]:
  """Logical axes of (state.params, state.frozen)."""
  policy = logical_axes(models.policy)
  params = {'policy': policy}
  if 'value' in state.params:
    params['value'] = ({'kernel': ('embed', None)} if models.value is None
                       else logical_axes(models.value))
  judge_model = getattr(models.judge, 'model', None)
  frozen = {'reference': policy, 'reward': logical_axes(models.reward),
            'judge': _axes_of(judge_model, state.frozen['judge'])}
  return params, frozen


def shard_rl_state(state: RLState, models: RLModels, tx: optax.GradientTransformation,
                   mesh: Mesh, rules: Any = parallel.DEFAULT_RULES) -> RLState:
  """`state` placed on `mesh`: params by their logical axes, optimizer moments like their params."""
  param_axes, frozen_axes = rl_param_axes(models, state)
  param_shardings = parallel.param_shardings(param_axes, state.params, mesh, rules)
  frozen_shardings = parallel.param_shardings(frozen_axes, state.frozen, mesh, rules)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_shardings = optax.tree_map_params(tx, lambda _, s: s, state.opt_state, param_shardings,
                                        transform_non_params=lambda _: replicated)
  shardings = state.replace(
      step=replicated, rng=replicated, params=param_shardings, opt_state=opt_shardings,
      frozen=frozen_shardings, kl_ctl=jax.tree.map(lambda _: replicated, state.kl_ctl))
  return jax.device_put(state, shardings)
