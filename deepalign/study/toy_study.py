"""The toy study (configs/toy_study.py): train every run, measure every policy, write the report.

  python -m deepalign.main --config=configs/toy_study.py --workdir=runs/toy

DIR/<run>/ the runs (deepalign/study/runs.py; finished ones are skipped on a re-run),
DIR/report.json, DIR/report.md, DIR/plots/*.png (deepalign/analysis/report.py),
DIR/figures.json (deepalign/study/figures.py: the papers' claims and the exploratory rows),
DIR/timings.json (seconds per part and per stage), DIR/log.txt (the full log; each run's own
in DIR/<run>/log.txt). On the console: one progress line for the whole study and, at the end,
the summary of deepalign/study/summary.py.
"""

import dataclasses
import json
import os
import time
from typing import Any

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


def _load_policies(workdir: str, names: list[str], trim_last_layer: bool
                   ) -> tuple[Any, dict]:
  """One model (they share an architecture, so every jit compiles once) and each run's params."""
  from deepalign import models
  model, params = None, {}
  for name in names:
    m, p = models.from_pretrained(os.path.join(workdir, name, 'export'),
                                  trim_last_layer=trim_last_layer)
    if model is not None and m.config != model.config:
      raise UserError(f'toy study: {name} has another architecture than {names[0]}; the study '
                      'measures policies of one shape (use one model.* for every run)')
    model = model or m
    params[name] = p
  return model, params


ANALYSIS_PRIOR_S = {'set-up': 10.0, 'measure': 15.0, 'report': 20.0}  # 2 quiet CPU cores


def analyse(config: ml_collections.ConfigDict, workdir: str, names: list[str],
            base_run: runs.Run, progress: Any) -> dict:
  """{policy name: report entry} for the trained policies `names` (base first); each policy's
  measurement is a stage of `progress`."""
  from deepalign.study import measure
  from deepalign.train import stage_data
  with progress.stage('analysis set-up'):
    base_config = runs.stage_config(base_run, config, workdir)
    data = stage_data.load(base_config)
    probe = measure.make_probe(data.env, data.tokenizer, data.template, base_config,
                               config.analysis)
    model, params = _load_policies(workdir, names, base_config.model.trim_last_layer)
  base_params = params[base_run.name]
  results = {}
  for name in names:
    with progress.stage(f'measure {name}'):
      start = time.perf_counter()
      # The same key for every model: common random numbers make the comparisons sharper.
      results[name] = measure.measure_policy(model, params[name], base_params, data.env, probe,
                                             config.analysis,
                                             jax.random.PRNGKey(int(config.seed) + 1))
      logging.info('toy study: measured %s in %.1f s', name, time.perf_counter() - start)
  return results


def plan(chosen: list[runs.Run], config: ml_collections.ConfigDict, workdir: str
         ) -> list[tuple[str, float]]:
  """The study's stages and their prior seconds: every run, the analysis set-up, one
  measurement per policy, the report."""
  stages = [(r.name, runs.prior_seconds(r, runs.stage_config(r, config, workdir))) for r in chosen]
  stages.append(('analysis set-up', ANALYSIS_PRIOR_S['set-up']))
  stages += [(f'measure {r.name}', ANALYSIS_PRIOR_S['measure']) for r in chosen if r.policy]
  return stages + [('report', ANALYSIS_PRIOR_S['report'])]


def run(config: ml_collections.ConfigDict, workdir: str, console: Any = None):
  """Trains the selected runs (resuming), then analyses them; returns a StudyResult, or the
  TrainResult of a run stopped by a preemption signal (re-run the command to resume).

  console: a deepalign.console.Console that shows the study's progress and prints the final
  summary (None: nothing printed). The full log goes to DIR/log.txt, each run's to
  DIR/<run>/log.txt.
  """
  from deepalign.analysis import report as report_lib
  from deepalign.console import Console, logs
  from deepalign.study import summary
  from deepalign.train import atomic_files, run_stage
  from deepalign.study import measure
  console = console or Console.silent()
  chosen = runs.selected(config.study)
  measure.check_analysis(config.analysis)  # before any training: a bad size fails in a second
  progress = console.progress(plan(chosen, config, workdir), title='toy study')  # checks configs
  os.makedirs(workdir, exist_ok=True)
  atomic_files.write_json_atomic(os.path.join(workdir, 'config.json'),
                                 json.loads(config.to_json_best_effort()))
  with logs.log_file(os.path.join(workdir, 'log.txt')):
    start = time.perf_counter()
    seconds, preempted = runs.train_all(chosen, config, workdir, run_stage.train_stage, progress)
    if preempted is not None:
      console.note('toy study: stopped by a preemption signal; re-run the same command to resume '
                   '(finished runs are skipped)')
      return preempted
    policies = [r.name for r in chosen if r.policy]
    base_run = next((r for r in chosen if r.name == 'base'), None) or next(
        r for r in chosen if r.policy)
    train_s = time.perf_counter() - start
    results = analyse(config, workdir, policies, base_run, progress)
    analysis_s = time.perf_counter() - start - train_s
    with progress.stage('report'):
      report = report_lib.write_report(
          results, workdir, metrics={r.name: os.path.join(workdir, r.name) for r in chosen},
          kinds={r.name: r.config_file for r in chosen}, seed=int(config.seed),
          title='deepalign toy study: shallow vs. deep alignment')
      claims, extra = figures.check(report), figures.second_base(report)
      atomic_files.write_json_atomic(os.path.join(workdir, 'figures.json'), {
          'claims': [dataclasses.asdict(c) for c in claims],
          'exploratory': [dataclasses.asdict(c) for c in extra]})
      with open(os.path.join(workdir, 'report.md')) as f:
        title, _, rest = f.read().partition('\n\n')
      # The claims first, under the title: what a reader opens the report for.
      atomic_files.write_text_atomic(os.path.join(workdir, 'report.md'), '\n\n'.join(
          [title, figures.markdown(claims, extra), rest]))
    total_s = time.perf_counter() - start
    atomic_files.write_json_atomic(os.path.join(workdir, 'timings.json'), {
        'train_s': seconds, 'train_total_s': train_s, 'analysis_s': analysis_s,
        'total_s': total_s, 'stages_s': progress.seconds})
    plot_files = sorted(os.listdir(os.path.join(workdir, 'plots')))
    done = summary.text(claims, extra, workdir, plot_files,
                        summary.timing(total_s, train_s, analysis_s))
    logging.info('toy study summary:\n%s', done)
    console.print(done)
  return StudyResult(preempted=False, report=report, claims=claims)
