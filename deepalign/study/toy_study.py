"""The toy study (configs/toy_study.py): train every run, measure every policy, write the report.

  python -m deepalign.main --config=configs/toy_study.py --workdir=runs/toy

DIR/<run>/ the runs (deepalign/study/runs.py; finished ones are skipped on a re-run),
DIR/report.json, DIR/report.md, DIR/plots/*.png (deepalign/analysis/report.py),
DIR/figures.json (deepalign/study/figures.py), DIR/timings.json (seconds per part).
"""

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import ml_collections
from absl import logging

from deepalign.errors import UserError
from deepalign.study import figures, runs


@dataclasses.dataclass
class StudyResult:
  preempted: bool
  report: dict
  claims: list


def _load_policies(workdir: str, names: list[str]) -> tuple[Any, dict]:
  """One model (they share an architecture, so every jit compiles once) and each run's params."""
  from deepalign import models
  model, params = None, {}
  for name in names:
    m, p = models.from_pretrained(os.path.join(workdir, name, 'export'))
    if model is not None and m.config != model.config:
      raise UserError(f'toy study: {name} has another architecture than {names[0]}; the study '
                      'measures policies of one shape (use one model.* for every run)')
    model = model or m
    params[name] = p
  return model, params


def analyse(config: ml_collections.ConfigDict, workdir: str, names: list[str],
            base_run: runs.Run) -> dict:
  """{policy name: report entry} for the trained policies `names` (base first)."""
  from deepalign.study import measure
  from deepalign.train import stage_data
  base_config = runs.stage_config(base_run, config, workdir)
  data = stage_data.load(base_config)
  probe = measure.make_probe(data.env, data.tokenizer, data.template, base_config,
                             config.analysis)
  model, params = _load_policies(workdir, names)
  base_params = params[base_run.name]
  results = {}
  for name in names:
    start = time.perf_counter()
    # The same key for every model: common random numbers make the comparisons sharper.
    results[name] = measure.measure_policy(model, params[name], base_params, data.env, probe,
                                           config.analysis, jax.random.PRNGKey(int(config.seed) + 1))
    logging.info('toy study: measured %s in %.1f s', name, time.perf_counter() - start)
  return results


def run(config: ml_collections.ConfigDict, workdir: str,
        train_fn: Callable[[ml_collections.ConfigDict, str], Any] | None = None):
  """Trains the selected runs (resuming), then analyses them; returns a StudyResult, or the
  TrainResult of a run stopped by a preemption signal (re-run the command to resume).

  train_fn(stage_config, run_dir): trains one run (default deepalign.main.run, which passes
  itself: under `python -m deepalign.main` that module is __main__, not deepalign.main).
  """
  if train_fn is None:
    from deepalign import main
    train_fn = main.run
  from deepalign.analysis import report as report_lib
  from deepalign.train import atomic_files
  chosen = runs.selected(config.study)
  os.makedirs(workdir, exist_ok=True)
  atomic_files.write_json_atomic(os.path.join(workdir, 'config.json'),
                                 json.loads(config.to_json_best_effort()))
  start = time.perf_counter()
  seconds, preempted = runs.train_all(chosen, config, workdir, train_fn)
  if preempted is not None:
    return preempted
  policies = [r.name for r in chosen if r.policy]
  base_run = next((r for r in chosen if r.name == 'base'), None) or next(
      r for r in chosen if r.policy)
  train_s = time.perf_counter() - start
  results = analyse(config, workdir, policies, base_run)
  analysis_s = time.perf_counter() - start - train_s
  report = report_lib.write_report(
      results, workdir, metrics={r.name: os.path.join(workdir, r.name) for r in chosen},
      title='deepalign toy study: shallow vs. deep alignment')
  claims, extra = figures.check(report), figures.second_base(report)
  atomic_files.write_json_atomic(os.path.join(workdir, 'figures.json'), {
      'claims': [dataclasses.asdict(c) for c in claims],
      'second_base': [dataclasses.asdict(c) for c in extra]})
  with open(os.path.join(workdir, 'report.md')) as f:
    text = f.read()
  atomic_files.write_text_atomic(os.path.join(workdir, 'report.md'),
                                 text + '\n' + figures.markdown(claims, extra))
  atomic_files.write_json_atomic(os.path.join(workdir, 'timings.json'), {
      'train_s': seconds, 'train_total_s': train_s, 'analysis_s': analysis_s,
      'total_s': time.perf_counter() - start})
  for c in claims + extra:
    logging.info('claim %-55s %s  (%s)', c.name, {True: 'holds', False: 'FAILS', None: 'n/a'}[c.holds],
                 c.measured)
  return StudyResult(preempted=False, report=report, claims=claims)
