"""report.json / report.md / plots/*.png are written with the documented schema."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.analysis import report
from deepalign.analysis.gradient_profile import GradNormProfile
from deepalign.analysis.harm_martingale_mc import MartingaleEstimate
from deepalign.analysis.kl_profile import KLProfile
from deepalign.errors import UserError

T = 6


def _synthetic(shallow: bool) -> dict:
  t = np.arange(1, T + 1)
  decay = np.exp(-2.0 * (t - 1)) if shallow else np.exp(-0.2 * (t - 1))
  return {
      'asr_at_k': {0: 0.02, 1: 0.5 if shallow else 0.05, 3: 0.9 if shallow else 0.06},
      'asr_at_k_se': {0: 0.01, 1: 0.05, 3: 0.03},
      'benign_helpfulness': 0.9,
      'over_refusal': np.float32(0.05),
      'kl_per_position': jnp.asarray(0.3 * decay),
      'grad_norm_per_position': 0.1 * decay,
      'grad_norm_recovery_per_position': list(0.05 * np.ones(T)),
      'harm_information': 0.2 * decay,
      'harm_horizon_mean': 1.2 if shallow else 3.5,
      'harm_horizon_hist': ([0.0, 0.85, 0.1, 0.05, 0, 0, 0] if shallow
                            else [0, .2, .2, .2, .2, .1, .1]),
  }


def _metrics(tmp_path, name):
  """A PPO run's metrics.jsonl (the keys deepalign/train/rl writes)."""
  run = tmp_path / name
  run.mkdir()
  rows = [{'step': s, 'train/reward/mean': -1.0 + 0.1 * s, 'train/kl': 0.01 * s,
           'train/harm/harmful_prompts': 0.5 - 0.02 * s, 'train/recovery/harm_rate': 0.9 - 0.03 * s,
           'train/policy/entropy': 1.0, 'train/clipfrac': None, 'train/loss/value': 0.1,
           'train/advantages/mean': 1e-7} for s in range(20)]
  # The last line was cut by a kill mid-write: the reader skips it.
  (run / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows) + '{"step": 2')
  return str(run)


def _legends(monkeypatch) -> list[tuple[str, list[str] | None]]:
  """Records (panel title, legend labels or None) of every visible axes of each saved figure."""
  from deepalign.analysis import plots
  panels = []
  save = plots._save

  def recording(fig, path, caption=''):
    panels.append(('caption', [caption]))
    for ax in fig.axes:
      if ax.axison:
        legend = ax.get_legend()
        panels.append((ax.get_title(), [t.get_text() for t in legend.get_texts()] if legend
                       else None))
    save(fig, path, caption)

  monkeypatch.setattr(plots, '_save', recording)
  return panels


def test_report_files_and_schema(tmp_path, monkeypatch):
  out = tmp_path / 'study'
  panels = _legends(monkeypatch)
  names = ['base', 'ppo', 'ppo_recovery', 'dpo', 'sft_recovery']
  results = {n: _synthetic(n != 'ppo_recovery') for n in names}
  metrics = {'ppo': _metrics(tmp_path, 'ppo'), 'ppo_recovery': _metrics(tmp_path, 'rec')}
  report.write_report(results, str(out), metrics=metrics, seed=3,
                      kinds={'ppo': 'ppo', 'ppo_recovery': 'ppo_recovery'})
  data = json.loads((out / 'report.json').read_text())
  assert sorted(data) == sorted(names)
  for name, entry in data.items():
    assert set(report.REQUIRED_KEYS) <= set(entry)
    assert list(entry['asr_at_k']) == ['0', '1', '3']
    assert all(isinstance(v, float) for v in entry['asr_at_k'].values())
    for key in ('benign_helpfulness', 'over_refusal', 'harm_horizon_mean'):
      assert isinstance(entry[key], float), key
    for key in ('kl_per_position', 'grad_norm_per_position', 'grad_norm_recovery_per_position',
                'harm_information'):
      assert len(entry[key]) == T and all(isinstance(v, float) for v in entry[key]), key
  assert data['ppo']['asr_at_k']['3'] == 0.9
  np.testing.assert_allclose(data['ppo']['kl_per_position'], results['ppo']['kl_per_position'],
                             rtol=1e-6)
  pngs = sorted(os.listdir(out / 'plots'))
  assert pngs == sorted(['asr_vs_prefill_depth.png', 'kl_per_position.png',
                         'grad_norm_per_position.png', 'harm_information.png',
                         'harm_horizon_hist.png', 'benign_helpfulness.png', 'training_ppo.png'])
  for png in pngs:
    blob = (out / 'plots' / png).read_bytes()
    assert blob[:8] == b'\x89PNG\r\n\x1a\n' and len(blob) > 10_000, png
  md = (out / 'report.md').read_text()
  for png in pngs:
    assert f'(plots/{png})' in md
  assert '| ppo | 0.020 | 0.900 |' in md  # ASR@0 and ASR@max k in the summary table
  # Every panel has a legend; the PPO panels draw reward, KL and harm on both kinds of rollout.
  assert panels and all(labels for _, labels in panels), [t for t, l in panels if not l]
  captions = [c for title, (c, *_) in panels if title == 'caption']
  assert len(captions) == 7 and all(c.endswith('seed 3') for c in captions), captions
  titles = {title: labels for title, labels in panels}
  for title in ('reward of ordinary rollouts', 'KL to the reference',
                'harm on ordinary rollouts (harmful prompts)',
                'harm on recovery rollouts (after a harmful prefix)'):
    assert titles[title] == ['ppo', 'ppo_recovery'], title
  assert not any('advantages' in t for t in titles)  # ~0 by construction: not a chosen metric
  # base / ppo / ppo_recovery in panels of their own, the other models in a second row.
  grads = [labels for title, labels in panels if title.startswith('objective E[h]')]
  assert grads == [['base', 'ppo', 'ppo_recovery'], ['dpo', 'sft_recovery']]
  kl = [labels for title, labels in panels if title in ('base, ppo, ppo_recovery', 'the other models')]
  assert kl[:2] == [['base', 'ppo', 'ppo_recovery'], ['dpo', 'sft_recovery']]


def test_entry_from_estimates_round_trips_through_the_report(tmp_path):
  prof = GradNormProfile(norm=jnp.ones(T), norm_se=jnp.full(T, 0.1), norm_sq_unbiased=jnp.ones(T))
  mart = MartingaleEstimate(
      H=None, H_se=None, cond_var=None, D=None, harm_information=jnp.linspace(0.2, 0.0, T),
      harm_information_se=jnp.full(T, 0.01), harm_variance=jnp.float32(0.2), horizon=None,
      horizon_hist=jnp.asarray([0, 0.5, 0.5, 0, 0, 0, 0]), horizon_mean=jnp.float32(1.5),
      horizon_mean_se=jnp.float32(0.1))
  entry = report.entry_from_estimates(
      asr={0: (0.1, 0.01), 5: (0.7, jnp.nan)},
      benign={'over_refusal': (0.02, 0.01), 'benign_helpfulness': (0.95, 0.02)},
      kl=KLProfile(mean=jnp.ones(T), se=jnp.zeros(T), count=jnp.ones(T)),
      grad=prof, grad_recovery=None, martingale=mart)
  data = report.write_report({'m': entry}, str(tmp_path))
  assert data['m']['asr_at_k'] == {'0': 0.1, '5': 0.7}
  assert data['m']['asr_at_k_se']['5'] is None  # NaN is not JSON: it becomes null
  assert data['m']['grad_norm_recovery_per_position'] is None
  assert data['m']['harm_horizon_mean'] == pytest.approx(1.5)
  assert json.loads((tmp_path / 'report.json').read_text()) == data
  assert not [f for f in os.listdir(tmp_path / 'plots') if f.startswith('training_')]


def test_report_rejects_incomplete_results(tmp_path):
  bad = _synthetic(True)
  del bad['harm_information']
  with pytest.raises(UserError, match="'m'.*harm_information"):
    report.write_report({'m': bad}, str(tmp_path))
  with pytest.raises(UserError, match='asr_at_k'):
    report.write_report({'m': {**_synthetic(True), 'asr_at_k': [0.1, 0.2]}}, str(tmp_path))
  with pytest.raises(UserError, match='metrics'):
    report.write_report({'m': _synthetic(True)}, str(tmp_path), metrics={'m': str(tmp_path / 'x')})
  assert not (tmp_path / 'report.json').exists()  # nothing half-written
  assert not (tmp_path / 'plots').exists()


def _legends(monkeypatch) -> list[tuple[str, list[str]]]:
  """Records (panel title, legend labels) of every axes each figure saved has."""
  from deepalign.analysis import plots
  panels = []
  save = plots._save

  def recording(fig, path, caption=''):
    panels.append(('caption', [caption]))
    for ax in fig.axes:
      if ax.axison:
        legend = ax.get_legend()
        panels.append((ax.get_title(), [t.get_text() for t in legend.get_texts()] if legend else None))
    save(fig, path, caption)

  monkeypatch.setattr(plots, '_save', recording)
  return panels

