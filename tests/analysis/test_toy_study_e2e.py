"""The README's main command end to end, and the issue's figures asserted on its report.json.

~6-7 minutes on 2 CPU cores. Set DEEPALIGN_TOY_STUDY_WORKDIR=DIR to keep (and on a re-run reuse)
the study's workdir: finished runs are skipped, so a second run only re-does the analysis.
"""

import json
import os
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
               'harm_information', 'harm_horizon_hist', 'training_curves'):
    assert os.path.getsize(os.path.join(study_dir, 'plots', f'{plot}.png')) > 1000
  assert '## The issue\'s claims' in open(os.path.join(study_dir, 'report.md')).read()


@pytest.mark.slow
def test_the_theorem_at_the_standard_ppo_policy_and_the_visitation_explanation(study_dir):
  with open(os.path.join(study_dir, 'report.json')) as f:
    extra = figures.second_base(json.load(f))
  by_name = {c.name: c for c in extra}
  for name in ('base: recovery / standard ||g_t|| beyond the horizon (visitation)',
               'ppo: standard gradient vanishes beyond the base horizon',
               'ppo: recovery gradient reaches beyond the base horizon'):
    assert by_name[name].holds, f'{name}: measured {by_name[name].measured}'
  assert 'How to read the two base-gradient figures' in open(
      os.path.join(study_dir, 'report.md')).read()


@pytest.mark.slow
@pytest.mark.parametrize('index', range(7))
def test_the_issue_figures_hold(study_dir, index):
  with open(os.path.join(study_dir, 'report.json')) as f:
    claims = figures.check(json.load(f))
  claim = claims[index]
  assert claim.holds, f'{claim.name}: measured {claim.measured}; needs {claim.threshold}'
