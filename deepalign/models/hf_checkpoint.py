"""`from_pretrained` / `save_pretrained`: Hugging Face checkpoints in and out of our parameter tree.

    model, params = models.from_pretrained('path/to/Llama-3.2-1B')      # config.json + safetensors
    logits = model.apply({'params': params}, tokens)                    # [B, T, V]
    models.save_pretrained(model, params, 'out/')                       # transformers loads it

The name/layout correspondence is `hf_tensor_map.py`, the config one `hf_config.py`, the files
`hf_files.py`. Every tensor of the checkpoint must be used and every parameter found, with the
shape the config implies: otherwise one UserError names the tensor and the file.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from deepalign.errors import UserError
from deepalign.models import hf_config, hf_files, hf_tensor_map
from deepalign.models.config import ModelConfig
from deepalign.models.axes import logical_axes
from deepalign.models.transformer import Transformer
from deepalign.parallel import rules as parallel_rules

Params = dict[str, Any]


def from_pretrained(hf_dir: str | os.PathLike, dtype: Any = None, param_dtype: Any = None,
                    shardings: Any = None, *, mesh: Mesh | None = None, rules: Any = None,
                    scan_layers: bool = False, remat: Any = 'none', trim_last_layer: bool = True
                    ) -> tuple[Transformer, Params]:
  """(Transformer, params) from a transformers checkpoint directory (safetensors only).

  `dtype` is the compute dtype, `param_dtype` the dtype parameters are stored in; both default
  to the checkpoint's (`config.json` `dtype` / `torch_dtype`; float16 becomes float32).
  `scan_layers` / `remat` / `trim_last_layer` set those `ModelConfig` fields (a scanned model's
  layers load stacked).

  Placement: without `shardings` or `mesh`, plain `jnp` arrays on the default device. With
  `mesh` (and the logical-axis `rules`, default `parallel.DEFAULT_RULES`), or an explicit
  `shardings` tree shaped like the params, each parameter is built with
  `jax.make_array_from_callback` straight into its shards: every process reads from the
  safetensors files only the slices its own devices hold (`get_slice`), so neither a host nor
  device 0 ever holds the whole model.
  """
  hf_dir = os.fspath(hf_dir)
  if os.path.isfile(hf_dir):
    hf_files.refuse_pickle(hf_dir)
  cfg = hf_config.load_hf_config(hf_dir, dtype=dtype, param_dtype=param_dtype)
  cfg = cfg.replace(scan_layers=scan_layers, remat=remat, trim_last_layer=trim_last_layer)
  model = Transformer(cfg)
  if shardings is None and mesh is not None:
    shardings = model_shardings(model, mesh, rules)
  with hf_files.CheckpointFiles(hf_dir) as files:
    params = load_params(cfg, files, shardings)
  _check_tree(model, params)
  return model, params


def model_shardings(model: Transformer, mesh: Mesh, rules: Any = None) -> Any:
  """The `NamedSharding` of every parameter of `model` on `mesh` by the logical-axis `rules`."""
  rules = parallel_rules.DEFAULT_RULES if rules is None else rules
  shapes = nn.meta.unbox(jax.eval_shape(model.init, jax.random.key(0),
                                        jnp.zeros((1, 1), jnp.int32))['params'])
  return parallel_rules.param_shardings(logical_axes(model), shapes, mesh, rules)


def load_params(cfg: ModelConfig, files: hf_files.CheckpointFiles, shardings: Any = None) -> Params:
  """The parameter tree of `cfg` read from `files` (checks names and shapes first).

  With `shardings`, each leaf is assembled from the blocks its addressable devices hold
  (each distinct block read once per process); otherwise each leaf is read whole.
  """
  links = hf_tensor_map.tensor_links(cfg)
  names = files.names
  prefix = hf_tensor_map.body_prefix(cfg)
  # A checkpoint saved from the bare backbone (GPT2Model, LlamaModel; e.g. the hub's gpt2)
  # has no 'model.' / 'transformer.' prefix.
  strip = not any(n.startswith(prefix) for n in names)

  def name_of(link: hf_tensor_map.TensorLink) -> str:
    return link.hf_name.removeprefix(prefix) if strip else link.hf_name

  where = _describe(files)

  wanted = {name_of(link) for link in links}
  tied = hf_tensor_map.tied_head_name(cfg)
  for name in sorted(names):
    if name not in wanted and name != tied and not hf_tensor_map.is_ignored_buffer(name):
      raise UserError(f'{files.file_of[name]}: tensor {name!r} is not used by a '
                      f'{hf_config.hf_architecture(cfg)} with this config.json; the files do not '
                      'match the config (fix config.json or remove the tensor).')
  for link in links:
    name = name_of(link)
    if name not in names:
      raise UserError(f'{where}: tensor {name!r} is missing, but config.json '
                      f'({hf_config.hf_architecture(cfg)}) needs it; the checkpoint is incomplete '
                      'or config.json describes another model.')
    shape = files.shape(name)
    if shape != link.hf_shape:
      raise UserError(f'{files.file_of[name]}: tensor {name!r} has shape {list(shape)} but '
                      f'config.json implies {list(link.hf_shape)}; the checkpoint and config.json '
                      'do not match.')

  dtype = cfg.params_dtype
  params: Params = {}
  for path, sources in _leaf_sources(cfg, links).items():
    shape = sources.shape

    def read(index: tuple[slice, ...], sources=sources) -> np.ndarray:
      return sources.read(files, name_of, index).astype(dtype, copy=False)

    if shardings is None:
      _set(params, path, jnp.asarray(read(tuple(slice(0, n) for n in shape))))
    else:
      _set(params, path, _assemble(shape, dtype, _lookup(shardings, path), read))
  return params


class _LeafSources:
  """Where one flax leaf comes from: (link, part) per layer for a stacked leaf, else one."""

  def __init__(self, stacked: bool):
    self.stacked = stacked
    self.parts: list[tuple[hf_tensor_map.TensorLink, int, tuple[int, ...]]] = []

  @property
  def shape(self) -> tuple[int, ...]:
    part_shape = self.parts[0][2]
    return ((len(self.parts),) + part_shape) if self.stacked else part_shape

  def read(self, files: hf_files.CheckpointFiles, name_of: Any, index: tuple[slice, ...]
           ) -> np.ndarray:
    def one(link: hf_tensor_map.TensorLink, part: int, index: tuple[slice, ...]) -> np.ndarray:
      return link.read(lambda hf_index: files.read_slice(name_of(link), hf_index), part, index)
    if not self.stacked:
      link, part, _ = self.parts[0]
      return one(link, part, index)
    layers = range(index[0].start, index[0].stop)
    return np.stack([one(*self.parts[i][:2], index[1:]) for i in layers])


def _leaf_sources(cfg: ModelConfig, links: list[hf_tensor_map.TensorLink]
                  ) -> dict[tuple[str, ...], _LeafSources]:
  """Every flax leaf (stacked under 'layers' when `cfg.scan_layers`) and the links it reads."""
  out: dict[tuple[str, ...], _LeafSources] = {}
  for link in links:
    for part, (path, shape) in enumerate(_flax_shapes(link)):
      layer = None
      if cfg.scan_layers:
        path, layer = hf_tensor_map.stacked_path(path)
      sources = out.setdefault(path, _LeafSources(stacked=layer is not None))
      if layer is not None:
        assert len(sources.parts) == layer, f'layers of {path} out of order'
      sources.parts.append((link, part, shape))
  return out


def _assemble(shape: tuple[int, ...], dtype: Any, sharding: jax.sharding.Sharding, read: Any
              ) -> jax.Array:
  """A global array of `shape` with `sharding` whose addressable blocks come from `read(index)`;
  replicas of one block on several local devices read it once."""
  blocks: dict[tuple[tuple[int, int], ...], np.ndarray] = {}

  def block(index: tuple[slice, ...]) -> np.ndarray:
    concrete = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index, shape))
    key = tuple((s.start, s.stop) for s in concrete)
    if key not in blocks:
      blocks[key] = read(concrete)
    return blocks[key]
  return jax.make_array_from_callback(shape, sharding, block, dtype=dtype)


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
  try:
    for key in path:
      tree = tree[key]
  except (KeyError, TypeError):
    raise UserError(f'shardings has no entry params{_fmt(path)}; pass a tree of shardings with '
                    'the structure of the params.') from None
  return tree


def save_pretrained(model: Transformer, params: Params, out_dir: str | os.PathLike,
                    max_shard_size: int | str = '5GB') -> list[str]:
  """Writes config.json + model.safetensors (sharded with an index above `max_shard_size`).

  The directory loads with `transformers.AutoModelForCausalLM.from_pretrained(out_dir)` (or
  `...ForSequenceClassification` for score/value heads). Tensors keep the params' dtype.
  Multi-host: every process must call it (arrays are gathered); process 0 writes.
  Returns the names of the files written.
  """
  cfg = model.config
  if set(params) == {'params'}:
    params = params['params']
  hf = hf_config.to_hf_config(cfg)
  getters, sizes, dtypes = hf_tensor_getters(cfg, params)
  # config.json `dtype` is what transformers loads into by default: the tensors' own.
  hf['dtype'] = hf['torch_dtype'] = dtypes.pop() if len(dtypes) == 1 else cfg.param_dtype
  out_dir = os.fspath(out_dir)
  if jax.process_index() != 0:
    # Take part in every gather, in the writer's order (one tensor at a time), write nothing.
    for getter in getters.values():
      getter()
    return []
  # Gathered tensor by tensor as their shard is written: one shard on the host at a time.
  written = hf_files.write_safetensors(getters, out_dir, max_shard_size, sizes)  # local or gs://
  (epath.Path(out_dir) / 'config.json').write_text(json.dumps(hf, indent=2, sort_keys=True) + '\n')
  return ['config.json'] + written


def tensors_for_hf(cfg: ModelConfig, params: Params) -> dict[str, np.ndarray]:
  """HF tensor name -> numpy array, for the parameter tree `params` of `cfg`."""
  getters, _, _ = hf_tensor_getters(cfg, params)
  return {name: getter() for name, getter in getters.items()}


def hf_tensor_getters(cfg: ModelConfig, params: Params
                      ) -> tuple[dict[str, Any], dict[str, int], set[str]]:
  """(HF name -> function returning its numpy array, name -> bytes, the dtypes' names).

  Checks the tree first. A getter gathers only the leaves (a scanned leaf: only its layer)
  that one HF tensor is made of.
  """
  links = hf_tensor_map.tensor_links(cfg)
  expected = {path: sources.shape for path, sources in _leaf_sources(cfg, links).items()}
  leaves = {tuple(k.key for k in path): leaf
            for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path in sorted(set(leaves) - set(expected)):
    raise UserError(f'params{_fmt(path)} is not part of a {hf_config.hf_architecture(cfg)} '
                    'with this config; pass the params of this model.')
  for path, shape in expected.items():
    if path not in leaves:
      raise UserError(f'params{_fmt(path)} is missing; pass the full params of this model.')
    if tuple(leaves[path].shape) != shape:
      raise UserError(f'params{_fmt(path)} has shape {list(leaves[path].shape)} but the config '
                      f'implies {list(shape)}; pass the params of this model.')

  def where(path: tuple[str, ...]) -> tuple[tuple[str, ...], int | None]:
    return hf_tensor_map.stacked_path(path) if cfg.scan_layers else (path, None)

  def getter(link: hf_tensor_map.TensorLink) -> Any:
    def get() -> np.ndarray:
      parts = []
      for path in link.paths:
        leaf_path, layer = where(path)
        leaf = leaves[leaf_path]
        parts.append(_host(leaf if layer is None else leaf[layer]))
      return link.to_hf(tuple(parts))
    return get

  getters, sizes, dtypes = {}, {}, set()
  for link in links:
    dtype = np.dtype(leaves[where(link.paths[0])[0]].dtype)
    getters[link.hf_name] = getter(link)
    sizes[link.hf_name] = int(np.prod(link.hf_shape)) * dtype.itemsize
    dtypes.add(str(dtype))
  return getters, sizes, dtypes


def _flax_shapes(link: hf_tensor_map.TensorLink) -> list[tuple[tuple[str, ...], tuple[int, ...]]]:
  if link.shapes is not None:
    return list(zip(link.paths, link.shapes))
  parts = link.to_flax(np.zeros(link.hf_shape, np.int8))
  return [(path, part.shape) for path, part in zip(link.paths, parts)]


def _host(x: Any) -> np.ndarray:
  """A numpy copy of a (possibly sharded over several hosts) array."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


def _set(tree: Params, path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _fmt(path: tuple[str, ...]) -> str:
  return ''.join(f'[{k!r}]' for k in path)


def _describe(files: hf_files.CheckpointFiles) -> str:
  index = os.path.join(files.dir, hf_files.INDEX_FILE)
  if os.path.isfile(index):
    return index
  return ', '.join(sorted(set(files.file_of.values()))) or files.dir


def _check_tree(model: Transformer, params: Params) -> None:
  """The loaded tree must be exactly the module's; a difference is a bug in hf_tensor_map."""
  shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 1), jnp.int32))
  want = jax.tree_util.tree_map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)),
                                nn.meta.unbox(shapes)['params'])
  got = jax.tree_util.tree_map(lambda x: (tuple(x.shape), jnp.dtype(x.dtype)), params)
  if want != got:
    raise AssertionError(f'hf_tensor_map built a tree that differs from Transformer.init: '
                         f'{jax.tree_util.tree_structure(got)} vs {jax.tree_util.tree_structure(want)}')

