"""The context the models' activation constraints read: the run's mesh and logical-axis rules.

    step = with_activation_sharding(step, mesh, rules)      # traced (and run) inside the context
    with activation_sharding(mesh, rules):                   # e.g. around `jit(f).lower(...)`
      ...

`models.sharding.constrain` pins an activation only under a context mesh (`jax.set_mesh`) and
reads the rules of `activation_rules` below; without both, XLA propagates the params'
fsdp sharding into the activations (embed-sharded, the batch replicated on every chip, the
chunked LM head's contraction split and all-reduced at [rows, chunk, V]). On one device there is
nothing to split: no context is entered and the program is the unconstrained one, bit for bit.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax.linen as nn
import jax

from deepalign.parallel.rules import DEFAULT_RULES, normalize_rules

# Set by `activation_rules` only. Not flax's `nn.logical_axis_rules`: under that context flax also
# constrains every parameter at init and at its shape check, and fails on DenseGeneral kernels
# (a rank-3 rule applied to the flat [D, H * hd] kernel it initialises).
_RULES: contextvars.ContextVar = contextvars.ContextVar('deepalign_activation_rules', default=None)


@contextlib.contextmanager
def activation_rules(rules: Sequence) -> Iterator[None]:
  """`models.sharding.constrain` maps logical names by `rules` inside this context."""
  token = _RULES.set(tuple(rules))
  try:
    yield
  finally:
    _RULES.reset(token)


def current_rules():
  """The rules of `activation_rules`, else an active `nn.logical_axis_rules`, else DEFAULT_RULES."""
  return _RULES.get() or tuple(nn.get_logical_axis_rules()) or DEFAULT_RULES


@contextlib.contextmanager
def activation_sharding(mesh: Any, rules: Any) -> Iterator[None]:
  """`jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)`; nothing on a one-device mesh."""
  if mesh is None or mesh.size == 1:
    yield
    return
  with jax.set_mesh(mesh), activation_rules(with_defaults(rules)):
    yield


def with_defaults(rules: Any) -> tuple:
  """`rules` normalized, plus DEFAULT_RULES' entry for every activation name they leave out
  (a config's own rules written before a name existed keep working)."""
  rules = normalize_rules(rules)
  named = {name for name, _ in rules}
  return rules + tuple(r for r in DEFAULT_RULES if r[0] not in named)


def with_activation_sharding(fn: Callable[..., Any], mesh: Any, rules: Any) -> Callable[..., Any]:
  """`fn` called (so traced, the first time) inside `activation_sharding(mesh, rules)`; `.lower`
  of a jitted `fn` too."""

  @functools.wraps(fn)
  def call(*args, **kwargs):
    with activation_sharding(mesh, rules):
      return fn(*args, **kwargs)

  if hasattr(fn, 'lower'):
    def lower(*args, **kwargs):
      with activation_sharding(mesh, rules):
        return fn.lower(*args, **kwargs)
    call.lower = lower
  return call
