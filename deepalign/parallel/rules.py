"""Logical-axis rules (MaxText style): parameter dimensions named by role, mapped to mesh axes.

A parameter's logical axes are a tuple of names, one per dimension, e.g. the
query kernel `[D, H, hd]` is `('embed', 'heads', 'kv')`. Rules map each name to
mesh axes; the same model then runs on any mesh by changing only the rules:

    shardings = param_shardings(logical_axes_tree, params_tree, mesh, DEFAULT_RULES)
    params = jax.device_put(params, shardings)

Resolution (per array): rules are tried in order, as in `flax.linen.logical_to_mesh_axes`;
a rule applies to a dimension with its name if that dimension is still unassigned.
Mesh axes already used by another dimension of the same array, absent from the
mesh, or of size 1 are skipped; of the rest, the longest prefix whose size divides the
dimension is used. A dimension nothing divides is replicated (e.g. 2 KV heads on
tensor=4), which flax's resolver, knowing no shapes, cannot do. A name with no
rule at all is an error: silently replicating a 70B embedding is not a default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
from flax.core import meta
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from deepalign.errors import UserError

MeshAxes = tuple[str, ...] | None
Rules = tuple[tuple[str, MeshAxes], ...]

# Activations: 'batch', 'length'; parameters: the rest (see CONTRACTS.md for which kernel has which).
DEFAULT_RULES: Rules = (
    ('batch', ('data', 'fsdp')),
    ('vocab', ('tensor',)),
    ('embed', ('fsdp',)),
    ('heads', ('tensor',)),
    ('kv_heads', ('tensor',)),
    ('mlp', ('tensor',)),
    ('kv', None),
    ('norm', None),
    ('length', None),
    ('layers', None),
    # The LM head (`models.lm_head`): vocabulary-parallel. Its input rows are gathered over
    # fsdp (a [rows, tokens, D] chunk is small) and its kernel and logits split the vocabulary
    # over fsdp x tensor, so no chip holds the whole [D, V] kernel in float32 nor its gradient,
    # and the log-softmax reduces over the split vocabulary with [rows, tokens] all-reduces.
    ('head_batch', ('data',)),
    ('head_vocab', ('fsdp', 'tensor')),
)


def normalize_rules(rules: Any) -> Rules:
  """Rules from a config: pairs `(name, mesh_axis | [mesh_axes] | None)` -> tuple of `(name, tuple | None)`."""
  out = []
  for rule in rules:
    if isinstance(rule, (str, bytes)) or not isinstance(rule, Sequence) or len(rule) != 2:
      raise UserError(f"logical-axis rule {rule!r} must be a pair like ('embed', 'fsdp') or ('kv', None)")
    name, axes = rule
    if not isinstance(name, str):
      raise UserError(f'logical-axis rule {rule!r}: the logical name must be a string')
    if axes is None:
      out.append((name, None))
    elif isinstance(axes, str):
      out.append((name, (axes,)))
    elif isinstance(axes, Sequence) and all(isinstance(a, str) for a in axes):
      out.append((name, tuple(axes)))
    else:
      raise UserError(f"logical-axis rule {rule!r}: mesh axes must be a name, a list of names, or None")
  return tuple(out)


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Any = DEFAULT_RULES, where: str = 'array') -> PartitionSpec:
  """The `PartitionSpec` for one array of `shape` whose dimensions have `logical_axes` names.

  Args:
    logical_axes: one name (or None = replicated) per dimension.
    shape: the array's shape, to check that each mesh axis divides its dimension.
    mesh: supplies the mesh axis sizes.
    rules: see module docstring; `DEFAULT_RULES` unless the config says otherwise.
    where: names the array in error messages (e.g. its path in the params tree).
  """
  rules = normalize_rules(rules)
  if len(logical_axes) != len(shape):
    raise UserError(f'{where}: logical axes {tuple(logical_axes)} name {len(logical_axes)} dimensions '
                    f'but the array has shape {tuple(shape)}; fix the logical axes of this parameter')
  known = {name for name, _ in rules}
  for name in logical_axes:
    if name is not None and name not in known:
      raise UserError(f"{where}: logical axis {name!r} has no rule; add e.g. ({name!r}, None) to "
                      f"replicate it or ({name!r}, 'fsdp') to shard it to the parallel rules")
  return _resolve(logical_axes, shape, dict(mesh.shape), rules)


def _resolve(logical_axes: Sequence[str | None], shape: Sequence[int], sizes: dict[str, int],
             rules: Rules) -> PartitionSpec:
  """The resolution of the module docstring over mesh axis `sizes` (rules already normalized)."""
  used: set[str] = set()
  assigned: list[MeshAxes | bool] = [False] * len(shape)  # False: no rule applied yet
  for name, axes in rules:
    for dim, dim_name in enumerate(logical_axes):
      if dim_name != name or assigned[dim] is not False:
        continue
      if axes is None:
        assigned[dim] = None
        continue
      # Size-1 axes split nothing; leaving them out keeps Explicit-mode types free of no-op shardings.
      free = [a for a in axes if sizes.get(a, 1) > 1 and a not in used]
      while free and shape[dim] % math.prod(sizes[a] for a in free):
        free.pop()
      if free:
        assigned[dim] = tuple(free)
        used.update(free)
  entries = []
  for axes in assigned:
    if not axes:  # False (no rule fitted) or None: replicated
      entries.append(None)
    else:
      entries.append(axes[0] if len(axes) == 1 else axes)
  return PartitionSpec(*entries)


def activation_spec(logical_axes: Sequence[str | None], shape: Sequence[int], mesh: Any,
                    rules: Any = DEFAULT_RULES) -> PartitionSpec:
  """The `PartitionSpec` an activation of `shape` named `logical_axes` is constrained to.

  As `logical_to_spec`, over the mesh's Auto axes only: an Explicit axis's sharding is part of
  the array's type and propagates by itself (constraining it needs `jax.sharding.reshard`).
  `mesh` is a `Mesh` or the `AbstractMesh` of `jax.sharding.get_abstract_mesh()` inside jit.
  """
  rules = normalize_rules(rules)
  if len(logical_axes) != len(shape):
    raise ValueError(f'activation logical axes {tuple(logical_axes)} do not match shape {tuple(shape)}')
  known = {name for name, _ in rules}
  for name in logical_axes:
    if name is not None and name not in known:
      raise UserError(f"activation logical axis {name!r} has no rule; add e.g. ({name!r}, None) to "
                      'the parallel rules')
  types = dict(zip(mesh.axis_names, mesh.axis_types))
  sizes = {a: n for a, n in dict(mesh.shape).items() if types.get(a) != AxisType.Explicit}
  return _resolve(logical_axes, shape, sizes, rules)


def _is_axes_leaf(x: Any) -> bool:
  return x is None or (isinstance(x, tuple) and all(a is None or isinstance(a, str) for a in x))


def _path_name(path: Sequence[Any]) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', getattr(k, 'idx', k)))) for k in path)


def param_specs(logical_axes_tree: Any, params_tree: Any, mesh: Mesh, rules: Any = DEFAULT_RULES) -> Any:
  """A `PartitionSpec` per parameter.

  Args:
    logical_axes_tree: pytree of tuples of logical names (`models.logical_axes(model)`);
      a None leaf means fully replicated.
    params_tree: the params with the same structure: arrays, or `jax.ShapeDtypeStruct`s
      from `jax.eval_shape` (anything with `.shape`).
  """
  rules = normalize_rules(rules)

  def spec(path: Sequence[Any], axes: tuple[str | None, ...] | None, leaf: Any) -> PartitionSpec:
    if isinstance(leaf, meta.AxisMetadata):  # flax's nn.LogicallyPartitioned boxes from model.init
      leaf = leaf.unbox()
    shape = tuple(leaf.shape)
    if axes is None:
      return PartitionSpec()
    return logical_to_spec(axes, shape, mesh, rules, where=f'parameter {_path_name(path)}')

  try:
    return jax.tree_util.tree_map_with_path(spec, logical_axes_tree, params_tree, is_leaf=_is_axes_leaf)
  except ValueError as e:
    raise UserError(f'the logical-axes tree does not match the params tree ({e}); '
                    'build both from the same model') from e


def param_shardings(logical_axes_tree: Any, params_tree: Any, mesh: Mesh, rules: Any = DEFAULT_RULES) -> Any:
  """A `NamedSharding` per parameter (see `param_specs`); pass to `jax.device_put` or `jit(out_shardings=)`."""
  specs = param_specs(logical_axes_tree, params_tree, mesh, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_params(params: Any, logical_axes_tree: Any, mesh: Mesh, rules: Any = DEFAULT_RULES) -> Any:
  """`params` placed on the mesh as the rules say (host arrays in, global sharded arrays out)."""
  return jax.device_put(params, param_shardings(logical_axes_tree, params, mesh, rules))


def sharded_init(init_fn: Any, logical_axes_tree: Any, mesh: Mesh, rules: Any = DEFAULT_RULES) -> Any:
  """`init_fn` jitted to write each parameter straight into its shards (no full copy on one device).

      params = sharded_init(lambda key: model.init(key, x)['params'], axes, mesh)(key)

  Flax partitioning boxes (`nn.LogicallyPartitioned`) are removed: the result is plain arrays.
  """

  def plain_init(*args: Any) -> Any:
    return meta.unbox(init_fn(*args))

  def run(*args: Any) -> Any:
    shapes = jax.eval_shape(plain_init, *args)
    shardings = param_shardings(logical_axes_tree, shapes, mesh, rules)
    return jax.jit(plain_init, out_shardings=shardings)(*args)

  return run
