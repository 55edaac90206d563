"""The README's main command end to end, and the issue's figures asserted on its report.json.

~5-8 minutes on 2 CPU cores. Set DEEPALIGN_TOY_STUDY_WORKDIR=DIR to keep (and on a re-run reuse)
the study's workdir: finished runs are skipped, so a second run only re-does the analysis.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from configs import toy_study
from deepalign.study import figures

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope='module')
def study_dir(tmp_path_factory):
  workdir = os.environ.get('DEEPALIGN_TOY_STUDY_WORKDIR') or str(tmp_path_factory.mktemp('toy'))
  proc = subprocess.run([sys.executable, '-m', 'deepalign.main', '--config=configs/toy_study.py',
                         f'--workdir={workdir}'], cwd=ROOT, capture_output=True, text=True,
                        timeout=3600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  for name, text in (('console.stdout', proc.stdout), ('console.stderr', proc.stderr)):
    with open(os.path.join(workdir, name), 'w') as f:  # what a person saw, for the console test
      f.write(text)
  return workdir


@pytest.mark.slow
def test_the_study_writes_its_report(study_dir):
  with open(os.path.join(study_dir, 'report.json')) as f:
    report = json.load(f)
  assert set(report) == set(toy_study.ALL_RUNS) - {'reward_model'}
  for name, entry in report.items():
    # 0,1,2,3,5,10,20,40 capped at len(harmful answer) - 1 = 8.
    assert set(entry['asr_at_k']) == {'0', '1', '2', '3', '5', '8'}, name
    assert len(entry['kl_per_position']) == len(entry['grad_norm_per_position']) == 12
  assert report['base']['kl_per_position'] == [0.0] * 12  # the base against itself
  for plot in ('asr_vs_prefill_depth', 'kl_per_position', 'grad_norm_per_position',
               'harm_information', 'harm_horizon_hist', 'benign_helpfulness', 'training_sft',
               'training_ppo'):
    assert os.path.getsize(os.path.join(study_dir, 'plots', f'{plot}.png')) > 1000
  assert '## The papers\' claims' in open(os.path.join(study_dir, 'report.md')).read()


@pytest.mark.slow
def test_the_visitation_explanation_of_the_base_figures(study_dir):
  """The rows at the standard-PPO policy are reported, not asserted: the recovery objective's
  profile there rests on a few heavy-tailed rows (see BASE_GRADIENTS_EXPLAINED); its point
  estimates are large beyond the horizon at seeds 0-2 but their noise guard passes at none."""
  with open(os.path.join(study_dir, 'report.json')) as f:
    extra = {c.name: c for c in figures.second_base(json.load(f))}
  row = extra['base: recovery / standard ||g_t|| beyond the horizon (visitation)']
  assert row.holds, f'{row.name}: measured {row.measured}'
  assert {'ppo: standard gradient vanishes beyond the base horizon',
          'ppo: recovery gradient reaches beyond the base horizon'} <= set(extra)
  assert 'How to read the two base-gradient figures' in open(
      os.path.join(study_dir, 'report.md')).read()


@pytest.mark.slow
@pytest.mark.parametrize('index', range(7))
def test_the_issue_figures_hold(study_dir, index):
  with open(os.path.join(study_dir, 'report.json')) as f:
    claims = figures.check(json.load(f))
  claim = claims[index]
  assert claim.holds, f'{claim.name}: measured {claim.measured}; needs {claim.threshold}'


ABSL_LINE = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')  # absl's 'I1202 06:28:53.181822 ...'


@pytest.mark.slow
def test_the_console_reads_as_a_person_wants(study_dir):
  """One progress display at the default verbosity (no absl lines, no backend probes), then a
  summary whose claim rows and exploratory rows are apart and never read FAILS."""
  read = lambda name: open(os.path.join(study_dir, name)).read()
  stderr, stdout = read('console.stderr'), read('console.stdout')
  err, out = [l for l in stderr.splitlines() if l.strip()], stdout.splitlines()
  assert not [l for l in err if ABSL_LINE.match(l) or 'libtpu' in l], stderr[-3000:]
  assert all(l.startswith(('[', 'warning: ')) for l in err), stderr[-3000:]
  heads = [l.split(':')[0] for l in err if l.startswith('[')]
  n = len(toy_study.ALL_RUNS) + 1 + len(toy_study.ALL_RUNS) - 1 + 1  # runs, set-up, measures, report
  assert heads[0] == f'[1/{n}] base' and heads[-1] == f'[{n}/{n}] report', heads
  assert re.search(r'\[\d+/\d+\] ppo: step \d+/320, [\d.]+ steps/s, ETA ', stderr) or \
      '[3/23] ppo: already finished' in stderr
  assert re.search(r'toy study: \d+:\d\d elapsed, about \d+:\d\d left', stderr)
  assert out[0].startswith('toy study done in ')
  start = lambda prefix: out.index(next(l for l in out if l.startswith(prefix)))
  claims, explore, report = (start("The papers' claims"), start('Exploratory rows (not claims'),
                             start('Report: '))
  assert claims < explore < report
  claim_rows, explore_rows = out[claims + 1:explore - 1], out[explore + 1:report - 1]
  assert len(claim_rows) == 7 and explore_rows and not set(claim_rows) & set(explore_rows)
  verdicts = lambda rows: {re.split(r'\s{2,}', r.strip())[0] for r in rows}
  assert verdicts(claim_rows) <= {'holds', 'does not hold'}
  assert verdicts(explore_rows) <= {'bound met', 'bound not met'}
  assert 'FAIL' not in stdout.upper()
  assert out[report] == f'Report: {os.path.join(study_dir, "report.md")}'
  assert out[report + 1].startswith('Plots:  ') and 'asr_vs_prefill_depth.png' in out[report + 1]
