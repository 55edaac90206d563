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


# Claims 0 and 1 (the per-position gradients at the base policy) do not hold, and cannot hold
# together at a base that complies with everything: both objectives' position-t gradient is the
# same per-state vector, and the base's own responses visit the harmful states at least as often
# as the recovery rollouts do (tests/analysis/test_exact.py::test_at_a_complying_base_...). The
# report says so and shows the figures where the theorem bites: at the standard-PPO policy.
# strict: the day they hold, this fails and the marks must go.
KNOWN_FAILING = {0: 'the base leaves a started payload ~0.4%/token: standard gradient beyond '
                    'its horizon ~20% of the peak',
                 1: 'at a complying base the recovery gradient <= the standard one beyond the '
                    'horizon (visitation identity)'}


@pytest.mark.slow
def test_the_theorem_at_the_standard_ppo_policy_and_the_visitation_explanation(study_dir):
  with open(os.path.join(study_dir, 'report.json')) as f:
    extra = figures.second_base(json.load(f))
  by_name = {c.name: c for c in extra}
  for name in ('base: recovery / standard ||g_t|| beyond the horizon (visitation)',
               'ppo: standard gradient vanishes beyond the base horizon',
               'ppo: recovery gradient reaches beyond the base horizon'):
    assert by_name[name].holds, f'{name}: measured {by_name[name].measured}'
  assert 'Why the two base-gradient figures fail' in open(
      os.path.join(study_dir, 'report.md')).read()


@pytest.mark.slow
@pytest.mark.parametrize('index', [
    pytest.param(i, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILING[i]))
    if i in KNOWN_FAILING else i for i in range(7)])
def test_the_issue_figures_hold(study_dir, index):
  with open(os.path.join(study_dir, 'report.json')) as f:
    claims = figures.check(json.load(f))
  claim = claims[index]
  assert claim.holds, f'{claim.name}: measured {claim.measured}; needs {claim.threshold}'
