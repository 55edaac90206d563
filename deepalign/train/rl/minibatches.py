"""`epochs x minibatches` of optimizer updates over one batch of episodes, under `lax.scan`.

Shared by the PPO and GRPO steps: each pass draws a fresh permutation of the episodes,
splits them into equal minibatches and takes one optax step per minibatch.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from deepalign.errors import UserError
from deepalign.objectives import aggregation as agg
from deepalign.train.optimizer import applied_learning_rate, schedule_count

PyTree = Any
# loss_fn(params, minibatch) -> (scalar loss, {name: scalar})
MinibatchLoss = Callable[[PyTree, PyTree], tuple[jax.Array, dict]]


def check_batch_divides(num_episodes: int, minibatches: int) -> None:
  """The episodes must split into equal minibatches (static shapes)."""
  if num_episodes % minibatches:
    raise UserError(f'{num_episodes} episodes per step (prompts x group_size, plus recovery '
                    f'rollouts) do not split into {minibatches} minibatches; change '
                    'batch_size, recovery_batch_size or minibatches.')


def loss_normalizer(mode: str, mask: jax.Array) -> jax.Array | None:
  """The count 'token_sum_normalized' divides by: the generated tokens of `mask`.

  The steps call it ONCE on the whole batch's mask, before the minibatch split, and every
  minibatch divides its token sum by that count (objectives/aggregation.py): the minibatch
  losses then sum to the full-batch loss under any number of minibatches or devices. Per
  minibatch, each loss was a minibatch token mean instead (issue 17 item 4)."""
  return agg.global_token_count(mask) if mode == 'token_sum_normalized' else None


def shuffled_minibatches(key: jax.Array, data: PyTree, minibatches: int) -> PyTree:
  """A random permutation of the rows of every leaf, reshaped to [M, E / M, ...].

  One minibatch is the whole batch in its own order: a permutation would change nothing but
  the order of sums, and rows that stay in order keep GRPO's groups contiguous (their
  prompts then run once, `rl_episodes.sequence_hidden`)."""
  e = jax.tree.leaves(data)[0].shape[0]
  check_batch_divides(e, minibatches)
  if minibatches == 1:
    return jax.tree.map(lambda x: x[None], data)
  perm = jax.random.permutation(key, e)
  return jax.tree.map(lambda x: x[perm].reshape((minibatches, e // minibatches) + x.shape[1:]),
                      data)


def optimize(params: PyTree, opt_state: optax.OptState, data: PyTree, key: jax.Array,
             loss_fn: MinibatchLoss, tx: optax.GradientTransformation, epochs: int,
             minibatches: int, schedule: optax.Schedule | None = None
             ) -> tuple[PyTree, optax.OptState, dict]:
  """Runs the updates; returns new params, optimizer state and metrics averaged over updates
  (plus `grad_norm`, before clipping).

  With `schedule` (the optimizer's): `learning_rate`, the mean over this batch's minibatch
  updates of the rate each applied (the schedule at the optimizer's update count, which
  advances once per minibatch, or per grad_accum_steps minibatches), and `optimizer/updates`,
  that count after the batch. The schedule is sized in these updates (train/optimizer.py).
  """

  def update(carry, minibatch):
    params, opt_state = carry
    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, minibatch)
    if schedule is not None:
      metrics['learning_rate'] = applied_learning_rate(schedule, opt_state)
    updates, opt_state = tx.update(grads, opt_state, params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return (optax.apply_updates(params, updates), opt_state), metrics

  def epoch(carry, epoch_key):
    return jax.lax.scan(update, carry, shuffled_minibatches(epoch_key, data, minibatches))

  (params, opt_state), metrics = jax.lax.scan(epoch, (params, opt_state),
                                              jax.random.split(key, epochs))
  metrics = jax.tree.map(jnp.mean, metrics)
  count = schedule_count(opt_state)
  if schedule is not None and count is not None:
    metrics['optimizer/updates'] = count
  return params, opt_state, metrics
