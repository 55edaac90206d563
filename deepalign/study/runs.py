"""The runs of the toy study: which stage each is, its config, and training it (or skipping it).

Every run is its stage file's `toy` preset (configs/*.py) plus the study's changes: the base
data's refusal / self-correction rates, `model.init_from` = the run it starts from and
`rl.reward_from` = the study's reward model, all inside the study's workdir.
"""

import contextlib
import dataclasses
import importlib
import json
import os
import time
from typing import Any, Callable

import ml_collections
from absl import logging

from deepalign.errors import UserError


@dataclasses.dataclass(frozen=True)
class Run:
  """name: the sub-workdir and the report's model name; config_file/preset: configs/FILE.py:PRESET;
  init_from: the run whose export/ initialises this one; policy: analysed as a language model;
  self_correction: which study rate the SFT data uses ('base' or 'second'), None for non-SFT;
  attack: a fine-tuning attack (Qi et al. 2024, Table 4) with this SFT objective."""
  name: str
  config_file: str
  preset: str = 'toy'
  init_from: str | None = None
  policy: bool = True
  self_correction: str | None = None
  attack: str | None = None


RUNS: tuple[Run, ...] = (
    Run('base', 'sft', self_correction='base'),
    Run('reward_model', 'reward_model', policy=False),
    Run('ppo', 'ppo', init_from='base'),
    Run('ppo_recovery', 'ppo_recovery', init_from='base'),
    Run('dpo', 'dpo', init_from='base'),
    Run('dpo_recovery', 'dpo', 'toy_recovery', init_from='base'),
    # Qi et al.'s augmentation: fine-tune the base on aligned data + safety-recovery rows.
    Run('sft_recovery', 'sft', 'toy_recovery', init_from='base'),
    Run('base_sc', 'sft', self_correction='second'),
    Run('ppo_sc', 'ppo', init_from='base_sc'),
    # Fine-tuning attacks on the standard PPO model: harmful compliance data, plain SFT vs. the
    # token-wise constrained objective (the aligned starting model is its reference).
    Run('attack_nll', 'sft', init_from='ppo', attack='nll'),
    Run('attack_constrained', 'sft', init_from='ppo', attack='token_constrained'),
)
BY_NAME = {r.name: r for r in RUNS}


def selected(study: ml_collections.ConfigDict) -> list[Run]:
  """The runs `study.runs` names (comma-separated), in pipeline order, with their inputs."""
  names = [n.strip() for n in str(study.runs).split(',') if n.strip()]
  unknown = [n for n in names if n not in BY_NAME]
  if unknown or not names:
    raise UserError(f"config.study.runs has unknown run(s) {unknown or names}; use a comma-separated "
                    f"subset of {','.join(BY_NAME)}")
  chosen = set(names)
  for name in names:  # a run needs the run it starts from and, for RL, the reward model
    run = BY_NAME[name]
    needs = [run.init_from] if run.init_from else []
    if run.config_file.startswith('ppo'):
      needs.append('reward_model')
    chosen.update(needs)
  return [r for r in RUNS if r.name in chosen]


def stage_config(run: Run, config: ml_collections.ConfigDict, workdir: str
                 ) -> ml_collections.ConfigDict:
  """The full config of `run`: configs/<run.config_file>.py:<preset> plus the study's changes."""
  module = importlib.import_module(f'configs.{run.config_file}')
  c = module.get_config(run.preset)
  study = config.study
  c.seed = int(config.seed)
  c.model.trim_last_layer = bool(study.get('trim_last_layer', False))
  c.data.language = config.data.language
  c.data.refusal_rate = float(study.refusal_rate)
  if run.self_correction is not None:
    c.data.self_correction_rate = float(study.base_self_correction_rate
                                        if run.self_correction == 'base'
                                        else study.second_base_self_correction_rate)
    steps = int(study.get('base_num_steps', 0))
    if steps < 0:
      raise UserError(f'config.study.base_num_steps={steps} must be >= 0 (0 = the SFT preset\'s)')
    if steps:
      c.train.update({'num_steps': steps, 'eval_every': min(int(c.train.eval_every), steps),
                      'checkpoint_every': min(int(c.train.checkpoint_every), steps)})
    lr = float(study.get('base_learning_rate', 0.0))
    if lr < 0:
      raise UserError(f'config.study.base_learning_rate={lr} must be >= 0 (0 = the SFT preset\'s)')
    if lr:
      c.optimizer.learning_rate = lr
  if run.init_from:
    c.model.init_from = os.path.join(workdir, run.init_from)
  if run.attack:
    # Every row complies (no refusals, no self-corrections): the harmful fine-tuning set.
    c.data.refusal_rate = 0.0
    c.data.self_correction_rate = 0.0
    c.sft.objective = run.attack
    c.train.num_steps = int(study.attack_num_steps)
    c.train.update({'eval_every': c.train.num_steps, 'checkpoint_every': c.train.num_steps,
                    'log_every': max(c.train.num_steps // 5, 1)})
    c.optimizer.update({'learning_rate': float(study.attack_learning_rate), 'warmup_steps': 0,
                        'schedule': 'constant'})
  if 'rl' in c:
    c.rl.reward_from = os.path.join(workdir, 'reward_model')
    c.train.num_steps = int(study.rl_num_steps)
    c.train.eval_every = int(study.rl_num_steps) // 2 or 1
    c.train.checkpoint_every = int(study.rl_num_steps) // 2 or 1
    if float(c.recovery.coef) > 0:
      c.recovery.coef = float(study.recovery_coef)
      c.recovery.entropy_coef = float(study.get('recovery_entropy_coef', -1.0))
    c.ppo.entropy_coef = float(study.get('rl_entropy_coef', 0.0))
  return c


def is_finished(run_dir: str, num_steps: int) -> bool:
  """A run trained all its steps and exported its checkpoint (results.json is written last)."""
  path = os.path.join(run_dir, 'results.json')
  if not (os.path.exists(path) and os.path.exists(os.path.join(run_dir, 'export', 'config.json'))):
    return False
  with open(path) as f:
    return int(json.load(f).get('step', -1)) == num_steps


# Seconds each kind of run takes on 2 quiet CPU cores (the README's machine): a fixed part
# (jax start-up, compiling, the final eval and export) and a part per training step. They only
# weigh the stages of the progress display's ETA against each other; the display rescales
# them by how long the finished stages really took on this machine.
PRIOR_SECONDS: dict[str, tuple[float, float]] = {
    'sft': (15.0, 0.02), 'reward_model': (12.0, 0.03), 'dpo': (20.0, 0.08),
    'ppo': (30.0, 0.35), 'ppo_recovery': (40.0, 0.55),
}


def prior_seconds(run: Run, stage: ml_collections.ConfigDict) -> float:
  """The expected seconds of `run` (its stage config `stage`) on the reference machine."""
  fixed, per_step = PRIOR_SECONDS.get(run.config_file, (20.0, 0.1))
  return fixed + per_step * int(stage.train.num_steps)


def train_all(runs: list[Run], config: ml_collections.ConfigDict, workdir: str,
              train_fn: Callable[[ml_collections.ConfigDict, str], Any],
              progress: Any = None) -> tuple[dict[str, float], Any]:
  """Trains every run not yet finished, in order, with `train_fn(config, run_dir)`
  (deepalign.train.run_stage.train_stage); each run is a stage of `progress` (a
  deepalign.console.Progress listing every run; None: no display), logging to DIR/<run>/log.txt.

  Returns ({run name: seconds spent in this call}, the result of a preempted run or None). A
  preempted run stops the study: re-running the command resumes it from its checkpoint.
  """
  seconds = {}
  for run in runs:
    run_dir = os.path.join(workdir, run.name)
    c = stage_config(run, config, workdir)
    if is_finished(run_dir, int(c.train.num_steps)):
      logging.info('toy study: %s already finished; skipping', run.name)
      if progress is not None:
        progress.skip(run.name)
      seconds[run.name] = 0.0
      continue
    logging.info('toy study: training %s (configs/%s.py:%s) in %s', run.name, run.config_file,
                 run.preset, run_dir)
    start = time.perf_counter()
    with (progress.stage(run.name, log_path=os.path.join(run_dir, 'log.txt'))
          if progress is not None else contextlib.nullcontext()):
      result = train_fn(c, run_dir)
    seconds[run.name] = time.perf_counter() - start
    if getattr(result, 'preempted', False):
      return seconds, result
  return seconds, None
