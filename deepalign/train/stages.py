"""The stages a config can name (`config.stage`) and the module that builds each Task."""

import importlib
import os

import ml_collections

from deepalign.errors import UserError
from deepalign.train.task import Task

# name -> module with build_task(config, workdir) -> Task
STAGES = {
    'linear_regression': 'deepalign.train.linear_regression',
    'sft': 'deepalign.train.sft',
    'reward_model': 'deepalign.train.reward_model',
    'dpo': 'deepalign.train.dpo',
    'ppo': 'deepalign.train.rl.stage',
    'grpo': 'deepalign.train.rl.stage',
}


def check_inputs(config: ml_collections.ConfigDict) -> None:
  """Cheap checks of what the config names (stage, directories), before any device or
  multi-host start-up: a typo in a path must not cost a pod allocation."""
  if config.stage not in STAGES:
    raise UserError(f"config.stage='{config.stage}' is unknown; valid stages: {', '.join(sorted(STAGES))}")
  model = config.get('model')
  if model is not None:
    for field in ('hf_dir', 'init_from'):
      path = model.get(field, '')
      if path and not os.path.isdir(path):
        raise UserError(f"config.model.{field}='{path}' is not a directory; download the checkpoint "
                        f'there or pass --config.model.{field}=DIR')


def build_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
  check_inputs(config)
  module = importlib.import_module(STAGES[config.stage])
  return module.build_task(config, workdir)
