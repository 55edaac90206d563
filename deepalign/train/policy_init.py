"""The model a stage trains: built from `config.model`, an HF checkpoint, or an earlier stage.

Precedence: `model.init_from` (the workdir of an earlier stage: its `export/` checkpoint;
or any HF directory) > `model.hf_dir` > a fresh model with the architecture fields of
`config.model` (vocab_size 0 = the tokenizer's vocabulary).
"""

import os
from typing import Any, Callable

import jax
import ml_collections

from deepalign import models, parallel
from deepalign.errors import UserError
from deepalign.models import hf_config

PyTree = Any
# config.model fields that are ModelConfig fields of the same name.
ARCH_FIELDS = ('family', 'vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'num_kv_heads',
               'head_dim', 'intermediate_size', 'max_position_embeddings', 'rope_theta',
               'norm_eps', 'tie_word_embeddings', 'dtype', 'param_dtype', 'remat')


def hf_dir_of(path: str) -> str | None:
  """The HF checkpoint directory `path` names: the export/ of a finished stage workdir, or `path`
  itself; None for neither (an unfinished workdir's config.json is its run config, not a model's)."""
  exported = os.path.join(path, 'export')
  if os.path.isfile(os.path.join(exported, 'config.json')):
    return exported
  if os.path.isfile(os.path.join(path, 'config.json')) and not os.path.isdir(
      os.path.join(path, 'checkpoints')):
    return path
  return None


def checkpoint_dir(config: ml_collections.ConfigDict) -> str:
  """The HF directory to start from, or '' for a fresh model."""
  source = config.model.init_from
  if source:
    found = hf_dir_of(source)
    if found is None:
      raise UserError(f"config.model.init_from='{source}' is neither a finished stage workdir "
                      '(with export/config.json) nor an HF checkpoint directory; run that stage first')
    return found
  return config.model.hf_dir


def _scan_layers(config: ml_collections.ConfigDict) -> bool:
  """`config.model.scan_layers` (False where the config has no such field)."""
  return bool(config.model.get('scan_layers', False))


def _mesh_and_rules(config: ml_collections.ConfigDict) -> tuple[Any, Any]:
  """The run's mesh and logical-axis rules from `config.parallel`, or (None, None) without one."""
  section = config.get('parallel', None)
  if section is None:
    return None, None
  return parallel.mesh_from_config(section), section.get('rules', parallel.DEFAULT_RULES)


def fresh_config(config: ml_collections.ConfigDict, tokenizer: Any, head: str) -> models.ModelConfig:
  values = {k: config.model[k] for k in ARCH_FIELDS}
  values['scan_layers'] = _scan_layers(config)
  values['trim_last_layer'] = trim_last_layer(config)
  values['vocab_size'] = values['vocab_size'] or tokenizer.vocab_size
  if values['head_dim'] == 0:
    values['head_dim'] = None
  return models.ModelConfig(head=head, pad_id=tokenizer.pad_id, bos_id=tokenizer.bos_id,
                            eos_id=tokenizer.eos_id, **values)


def with_score_head(params: PyTree, cfg: models.ModelConfig, rng: jax.Array) -> PyTree:
  """An LM's body with a fresh score head (reward model from an SFT policy), or as is."""
  params = dict(params)
  if cfg.head == 'lm' or 'score' in params:
    return params
  params.pop('lm_head', None)
  kernel = cfg.initializer_range * jax.random.normal(rng, (cfg.hidden_size, cfg.num_labels))
  params['score'] = {'kernel': kernel.astype(cfg.params_dtype)}
  return params


def build(config: ml_collections.ConfigDict, tokenizer: Any, head: str = 'lm'
          ) -> tuple[models.Transformer, Callable[[jax.Array], PyTree]]:
  """(model, init_params(rng)) for `head` ('lm' policy, 'score' reward model)."""
  source = checkpoint_dir(config)
  if not source:
    cfg = fresh_config(config, tokenizer, head)
    model = models.Transformer(cfg)
    _check_vocab(tokenizer, cfg)
    return model, lambda rng: models.init_params(model, rng)
  if config.model.get('abstract', False):  # deepalign.plan: the architecture only, no weights
    loaded_config = hf_config.load_hf_config(source, dtype=config.model.dtype,
                                             param_dtype=config.model.param_dtype)
    loaded = None
  else:
    # Straight into the run's mesh layout: each process reads only its parameters' slices.
    mesh, rules = _mesh_and_rules(config)
    loaded_model, loaded = models.from_pretrained(source, dtype=config.model.dtype,
                                                  param_dtype=config.model.param_dtype,
                                                  mesh=mesh, rules=rules,
                                                  scan_layers=_scan_layers(config))
    loaded_config = loaded_model.config
  cfg = loaded_config.replace(remat=config.model.remat, scan_layers=_scan_layers(config),
                              trim_last_layer=trim_last_layer(config))
  if cfg.head != head:
    cfg = cfg.replace(head=head, num_labels=1)
  model = models.Transformer(cfg)
  _check_vocab(tokenizer, cfg)
  if loaded is None:  # abstract: traced under jax.eval_shape only, never run
    return model, lambda rng: models.init_params(model, rng)
  # Loaded arrays are constants; only a new head depends on the key.
  return model, lambda rng: with_score_head(loaded, cfg, rng)


def abstract_scorer(directory: str, config: ml_collections.ConfigDict, param_dtype: str
                    ) -> tuple[models.Transformer, PyTree]:
  """(model, params as `jax.ShapeDtypeStruct`s) of the checkpoint in `directory` from its
  config.json alone (`config.model.abstract`: deepalign.plan). `traceable` turns the shapes into
  values inside a trace."""
  cfg = hf_config.load_hf_config(directory, dtype=config.model.dtype, param_dtype=param_dtype)
  model = models.Transformer(cfg.replace(scan_layers=_scan_layers(config),
                                         trim_last_layer=trim_last_layer(config)))
  return model, jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0)))


def load_frozen(directory: str, config: ml_collections.ConfigDict, param_dtype: str
                ) -> tuple[models.Transformer, PyTree]:
  """A frozen model (reward model, judge) from an HF directory, stored as `param_dtype`,
  straight into the run's mesh layout (each process reads only its slices), scanned like the
  policy."""
  mesh, rules = _mesh_and_rules(config)
  return models.from_pretrained(directory, dtype=config.model.dtype, param_dtype=param_dtype,
                                mesh=mesh, rules=rules, scan_layers=_scan_layers(config),
                                trim_last_layer=trim_last_layer(config))


def trim_last_layer(config: ml_collections.ConfigDict) -> bool:
  """`model.trim_last_layer` (default on; `models.read_positions`) for every model of a run."""
  return bool(config.model.get('trim_last_layer', True))


def cast_floats(tree: PyTree, dtype: str) -> PyTree:
  """Every floating leaf of `tree` as `dtype` (arrays or `jax.ShapeDtypeStruct`s); others as is."""
  dtype = jax.numpy.dtype(dtype)

  def cast(x):
    if not jax.numpy.issubdtype(x.dtype, jax.numpy.floating) or x.dtype == dtype:
      return x
    if isinstance(x, jax.ShapeDtypeStruct):
      return jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding)
    return x.astype(dtype)
  return jax.tree.map(cast, tree)


def traceable(tree: PyTree) -> PyTree:
  """`tree` with every `jax.ShapeDtypeStruct` leaf (an abstract model's params) replaced by zeros
  of its shape: free inside `jax.eval_shape` / `jit(...).lower`, where an abstract run uses it."""
  return jax.tree.map(lambda x: jax.numpy.zeros(x.shape, x.dtype)
                      if isinstance(x, jax.ShapeDtypeStruct) else x, tree)


def initial_params(config: ml_collections.ConfigDict, init_params: Callable[[jax.Array], PyTree],
                   rng: jax.Array) -> PyTree:
  """`init_params(rng)`, or only its shapes (`jax.ShapeDtypeStruct`s) when `config.model.abstract`:
  a frozen copy of the starting model (a DPO reference) that an abstract plan never allocates."""
  if config.model.get('abstract', False):
    return jax.eval_shape(init_params, rng)
  return init_params(rng)


def _check_vocab(tokenizer: Any, cfg: models.ModelConfig) -> None:
  if tokenizer.vocab_size > cfg.vocab_size:
    raise UserError(f'the tokenizer has {tokenizer.vocab_size} ids but the model embeds only '
                    f'{cfg.vocab_size}; use the tokenizer of the checkpoint (config.data.tokenizer_dir)')


def export(model: models.Transformer, params: PyTree, workdir: str) -> str:
  """Writes DIR/export (an HF checkpoint `transformers` loads) and returns its path."""
  out = os.path.join(workdir, 'export')
  # Not device_get: save_pretrained gathers one tensor at a time (multi-host too).
  models.save_pretrained(model, params, out)
  return out


def exporting_finish(model: models.Transformer, part: str | None = None
                     ) -> Callable[[PyTree, str], dict]:
  """A `Task.finish` that exports the trained params (`params[part]` when given) to DIR/export;
  idempotent, so re-running a finished workdir rewrites the same checkpoint."""

  def finish(params: PyTree, workdir: str) -> dict:
    export(model, params if part is None else params[part], workdir)
    return {}

  return finish

