"""What a stage hands the generic loop: init, loss, data, eval, and what to do at the end."""

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Optional

import jax

from deepalign.train.state import TrainState

PyTree = Any
Batch = Mapping[str, Any]
# loss_fn(params, frozen, batch, rng) -> (scalar loss, {name: scalar array})
LossFn = Callable[[PyTree, PyTree, Batch, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]


@dataclasses.dataclass
class Task:
  """One trainable problem.

  init_params: rng -> params (called under `jax.eval_shape` too, so it must be pure).
  loss_fn: jit-traceable; `frozen` holds arrays that do not train (a reference model's
    params, precomputed tables) and are passed as jit arguments rather than closed over,
    so they are never baked into the compiled program as constants.
  train_iterator: () -> a fresh iterator of batches (dicts of numpy arrays, static
    shapes) with grain's `get_state()` / `set_state()` so its position is checkpointed.
  eval_fn: params -> {name: float} on held-out data (host-side; may jit inside).
  finish: (params, workdir) -> {name: float}: export / final report after training;
    it also runs when a finished workdir is re-run, so it must be idempotent.
  param_axes: logical axis names of every parameter (`models.logical_axes(model)`); the
    loop shards params, optimizer state and a same-shaped `frozen` over the mesh by
    `config.parallel.rules`. None = replicated (small problems).
  create_state: (params, tx, rng) -> state, for a task with its own state pytree (RL:
    policy, value, frozen reference and reward model, KL controller). It must have `step`
    (int32 scalar), `params` (what eval_fn / finish receive) and be checkpointable. Default:
    `TrainState.create`.
  make_step: (tx, schedule, grad_accum_steps, state_shardings, metrics_sharding) ->
    step(state, frozen, batch) -> (state, metrics), jitted with the state donated, for a
    task whose update is not one gradient of `loss_fn` (the fused PPO/GRPO steps).
    Default: `loop.make_train_step(loss_fn, ...)`.
  updates_per_batch: `tx.update` calls per batch (PPO / GRPO: epochs x minibatches); the
    learning-rate schedule spans num_steps * updates_per_batch / grad_accum_steps updates.
  """
  init_params: Callable[[jax.Array], PyTree]
  loss_fn: Optional[LossFn]
  train_iterator: Callable[[], Iterator[Batch]]
  frozen: PyTree = None
  eval_fn: Optional[Callable[[PyTree], Mapping[str, float]]] = None
  finish: Optional[Callable[[PyTree, str], Mapping[str, float]]] = None
  param_axes: PyTree = None
  # The RL stages bring their own state and fused step (deepalign/train/rl.py).
  create_state: Callable[[PyTree, Any, jax.Array], Any] = TrainState.create
  make_step: Optional[Callable[..., Callable]] = None
  updates_per_batch: int = 1
