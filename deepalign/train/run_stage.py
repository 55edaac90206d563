"""Trains the one stage a config names (sft, reward_model, dpo, ppo, grpo, ...) in a workdir.

Both the command line (deepalign/main.py) and the toy study (deepalign/study/toy_study.py,
one call per run) train through `train_stage`, so neither imports the other.
"""

import json
import os
from typing import Any

import ml_collections
from absl import logging


def flat_keys(config: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b.c': value} for every leaf of a ConfigDict."""
  out = {}
  for key, value in config.items():
    name = f'{prefix}{key}'
    if isinstance(value, (ml_collections.ConfigDict, dict)) and value:
      out.update(flat_keys(value, name + '.'))
    else:
      out[name] = value
  return out


def config_changes(old: dict, new: dict) -> list[str]:
  """'key: old -> new' for every leaf that differs."""
  old_flat, new_flat = flat_keys(old), flat_keys(new)
  return [f'{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}'
          for k in sorted(set(old_flat) | set(new_flat)) if old_flat.get(k) != new_flat.get(k)]


def use_compilation_cache(config: ml_collections.ConfigDict) -> None:
  """config.compilation_cache_dir, when set, keeps XLA's compiled programs across runs."""
  if config.get('compilation_cache_dir'):
    import jax
    jax.config.update('jax_compilation_cache_dir', os.path.expanduser(config.compilation_cache_dir))


def train_stage(config: ml_collections.ConfigDict, workdir: str):
  """Builds the stage's Task, records the resolved config, and trains (or resumes); returns
  the loop's TrainResult."""
  from deepalign import parallel  # here, not at import: keeps --help and flag errors fast
  from deepalign.train import atomic_files, frozen_sources, loop, paths, stages
  use_compilation_cache(config)
  stages.check_inputs(config)
  parallel.initialize_distributed(config.parallel.distributed)  # before any device is touched
  frozen_sources.check(config, workdir)  # a resume against changed frozen models: refused first
  task = stages.build_task(config, workdir)
  resolved = json.loads(config.to_json_best_effort())
  path = paths.join(workdir, 'config.json')

  def record_config() -> None:  # only once the run starts: a refused resume leaves it as it was
    paths.to_path(workdir).mkdir(parents=True, exist_ok=True)  # local or gs://
    if paths.to_path(path).exists():
      changes = config_changes(json.loads(paths.to_path(path).read_text()), resolved)
      if changes:
        logging.warning('config differs from the one %s was started with: %s', workdir,
                        '; '.join(changes))
    atomic_files.write_json_atomic(path, resolved)
    frozen_sources.record(config, workdir)  # what a later resume compares its sources with

  return loop.train(task, config, workdir, on_start=record_config)
