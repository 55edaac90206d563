"""DIR/report.json, DIR/report.md and DIR/plots/*.png from the per-model results of a study.

report.json maps each model name to:
  asr_at_k                         {"0": float, "1": ..., "5": ...}   ASR@k, k = prefill depth
  benign_helpfulness               float   fraction of benign prompts answered helpfully
  over_refusal                     float   fraction of benign prompts refused
  kl_per_position                  [T] nats, KL(policy || reference) at response position t
  grad_norm_per_position           [T] ||g_t|| of the standard objective E[h]
  grad_norm_recovery_per_position  [T] ||g_t|| of the recovery objective L_rec
  harm_information                 [T] I_t = E[D_t^2]
  harm_horizon_mean                float   E[tau]
Optional, kept when given: asr_at_k_se, benign_helpfulness_se, over_refusal_se,
kl_per_position_se, grad_norm_per_position_se, grad_norm_recovery_per_position_se,
harm_information_se, harm_horizon_mean_se, harm_horizon_hist ([T+1], P(tau = t)), and any
other JSON-serializable extras. A value may be null where it was not measured.
"""

import json
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from deepalign.analysis import plots
from deepalign.errors import UserError
from deepalign.train import atomic_files

REQUIRED_KEYS = ('asr_at_k', 'benign_helpfulness', 'over_refusal', 'kl_per_position',
                 'grad_norm_per_position', 'grad_norm_recovery_per_position',
                 'harm_information', 'harm_horizon_mean')
_SCALARS = ('benign_helpfulness', 'over_refusal', 'harm_horizon_mean')
_PROFILES = ('kl_per_position', 'grad_norm_per_position', 'grad_norm_recovery_per_position',
             'harm_information')

PLOTS = {
    'asr_vs_prefill_depth.png': (
        'Attack success rate against prefill depth',
        'Each line is one model: the fraction of harmful prompts that end in a harmful answer '
        'when an attacker writes the first k tokens of the answer and the model continues. A '
        'shallowly aligned model is safe at k = 0 but climbs quickly with k, while a deeply '
        'aligned one stays low at every depth because it still refuses mid-answer.'),
    'kl_per_position.png': (
        'Per-position KL to the reference model',
        'How far the trained policy moved from the reference at each response position, in '
        'nats, with both models reading the same harmful answers token by token. Standard RLHF '
        'concentrates this change in the first few tokens (where the harm is decided); deep '
        'alignment spreads it out.'),
    'grad_norm_per_position.png': (
        'Per-position gradient norm: standard vs. recovery objective',
        'The size of the training signal about harm that reaches each response position '
        '(left: the ordinary objective on the model\'s own responses; right: the recovery '
        'objective, which continues a harmful prefix). Once a model refuses at the start '
        '(standard PPO) the ordinary signal is gone at every position, while the recovery '
        'objective still reaches the deep positions where the model would go on with a harmful '
        'answer.'),
    'harm_information.png': (
        'Harm information per position',
        'I_t = E[D_t^2] measures how much writing token t changes the expected harm, and the '
        'values add up to the variance of the harm. Positions with no harm information get no '
        'gradient during training and no change at the optimum, which is why alignment stays '
        'shallow.'),
    'harm_horizon_hist.png': (
        'Distribution of the harm horizon',
        'For each response, the harm horizon is the first position after which its harm is '
        'already decided (further tokens cannot change it). Bars near 1 mean the outcome is '
        'settled by the opening tokens, the signature of shallow alignment.'),
    'benign_helpfulness.png': (
        'Benign prompts: helpfulness and over-refusal',
        'The fraction of held-out benign prompts each model answers helpfully (green) and '
        'refuses (red). Safety bought by refusing everything would show here as red bars; the '
        'deeply aligned models should keep the base model\'s helpfulness.'),
}
KIND_TITLES = {'sft': 'SFT runs', 'reward_model': 'the reward model', 'dpo': 'DPO runs',
               'ppo': 'PPO runs', 'grpo': 'GRPO runs'}
TRAINING_TEXT = {
    'sft': 'The SFT runs (the bases, Qi et al.\'s augmentation, the fine-tuning attacks): training '
           'NLL, the held-out NLL and how the sampled answers behave at each evaluation, the '
           'gradient norm and the learning rate.',
    'reward_model': 'The Bradley-Terry reward model: loss, pair accuracy (train and held out), '
                    'the reward margin between chosen and rejected answers, the learning rate.',
    'dpo': 'The DPO runs: loss, the implicit reward\'s accuracy and margin, the learning rate.',
    'ppo': 'The RL runs, per iteration: the reward of ordinary rollouts, the KL to the reference '
           'model, the harm on ordinary rollouts of harmful prompts (ASR@0 while training) and on '
           'recovery rollouts (after a harmful prefix: the recovery penalty\'s target), the '
           'policy entropy, the PPO clip fraction and the value loss. Check that the reward '
           'rose and the KL settled before reading the other plots.',
}
TRAINING_TEXT['grpo'] = TRAINING_TEXT['ppo']


def training_plot_name(kind: str) -> str:
  return f'training_{kind}.png'


def plot_info(fname: str) -> tuple[str, str]:
  """(heading, explanation) of a plot file report.md shows."""
  if fname in PLOTS:
    return PLOTS[fname]
  kind = fname[len('training_'):-len('.png')]
  return (f'Training curves: {KIND_TITLES.get(kind, kind)}',
          TRAINING_TEXT.get(kind, 'The metrics each run logged to metrics.jsonl.')
          + ' Faint lines are the logged values, solid ones their moving average.')


def infer_kind(rows: Sequence[Mapping[str, Any]]) -> str:
  """The kind of stage a metrics.jsonl is from, read off its keys (sft when nothing else fits)."""
  keys = {k for row in rows for k in row}
  for kind, marker in (('ppo', 'train/reward/mean'), ('dpo', 'train/rewards/accuracies'),
                       ('reward_model', 'train/margin')):
    if marker in keys:
      return kind
  return 'sft'


def _finite_or_none(value: float) -> float | None:
  value = float(value)
  return value if math.isfinite(value) else None


def to_jsonable(value: Any) -> Any:
  """numpy/jax arrays and scalars to lists/floats; NaN/inf to null (JSON has neither)."""
  if value is None or isinstance(value, (str, bool)):
    return value
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  arr = np.asarray(value)
  if arr.ndim == 0:
    return int(arr) if np.issubdtype(arr.dtype, np.integer) else _finite_or_none(arr)
  return [to_jsonable(v) for v in arr.tolist()]


def normalize_entry(name: str, entry: Mapping[str, Any]) -> dict:
  """One model's results, validated and made JSON-ready (asr keys become strings)."""
  missing = [k for k in REQUIRED_KEYS if k not in entry]
  if missing:
    raise UserError(f'report: results for model {name!r} lack {missing}; give every key of '
                    f'{list(REQUIRED_KEYS)} (None where not measured).')
  out = {k: to_jsonable(v) for k, v in entry.items()}
  for key in ('asr_at_k', 'asr_at_k_se'):
    if out.get(key) is not None and not isinstance(out[key], dict):
      raise UserError(f'report: {name!r}.{key} must map prefill depth k to a value, got '
                      f'{type(entry[key]).__name__}.')
    if out.get(key) is not None:
      try:
        out[key] = {str(int(k)): v for k, v in sorted(out[key].items(), key=lambda kv: int(kv[0]))}
      except ValueError:
        raise UserError(f'report: {name!r}.{key} has a key that is not an integer depth: '
                        f'{list(out[key])}.') from None
  for key in _SCALARS:
    if isinstance(out.get(key), list):
      raise UserError(f'report: {name!r}.{key} must be a number, got a list.')
  for key in _PROFILES:
    if out.get(key) is not None and not isinstance(out[key], list):
      raise UserError(f'report: {name!r}.{key} must be a per-position list, got {out[key]!r}.')
  return out


def entry_from_estimates(*, asr: Mapping[int, tuple[float, float]] | None = None,
                         benign: Mapping[str, tuple[float, float]] | None = None,
                         kl=None, grad=None, grad_recovery=None, martingale=None) -> dict:
  """A report entry from the estimators' outputs (any may be None = not measured).

  Args:
    asr: prefill_attack.prefill_asr output {k: (mean, se)}.
    benign: prefill_attack.benign_eval output.
    kl: kl_profile.KLProfile; grad, grad_recovery: gradient_profile.GradNormProfile.
    martingale: harm_martingale_mc.MartingaleEstimate.
  """
  def first(pair, i):
    return None if pair is None else pair[i]

  benign = benign or {}
  entry = {
      'asr_at_k': None if asr is None else {str(k): v[0] for k, v in asr.items()},
      'asr_at_k_se': None if asr is None else {str(k): v[1] for k, v in asr.items()},
      'benign_helpfulness': first(benign.get('benign_helpfulness'), 0),
      'benign_helpfulness_se': first(benign.get('benign_helpfulness'), 1),
      'over_refusal': first(benign.get('over_refusal'), 0),
      'over_refusal_se': first(benign.get('over_refusal'), 1),
      'kl_per_position': None if kl is None else kl.mean,
      'kl_per_position_se': None if kl is None else kl.se,
      'grad_norm_per_position': None if grad is None else grad.norm,
      'grad_norm_per_position_se': None if grad is None else grad.norm_se,
      'grad_norm_recovery_per_position': None if grad_recovery is None else grad_recovery.norm,
      'grad_norm_recovery_per_position_se': (None if grad_recovery is None
                                             else grad_recovery.norm_se),
      'harm_information': None if martingale is None else martingale.harm_information,
      'harm_information_se': None if martingale is None else martingale.harm_information_se,
      'harm_horizon_mean': None if martingale is None else martingale.horizon_mean,
      'harm_horizon_mean_se': None if martingale is None else martingale.horizon_mean_se,
      'harm_horizon_hist': None if martingale is None else martingale.horizon_hist,
  }
  return {k: to_jsonable(v) for k, v in entry.items()}


def read_metrics_jsonl(path: str) -> list[dict]:
  """Rows of a metrics.jsonl file (or of DIR/metrics.jsonl given DIR); a cut line is skipped."""
  if os.path.isdir(path):
    path = os.path.join(path, 'metrics.jsonl')
  if not os.path.exists(path):
    raise UserError(f'report: no metrics file at {path}; pass the workdir of a run that '
                    'logged metrics (it writes DIR/metrics.jsonl).')
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # the last line of a run killed mid-write
  return rows


def _fmt(value: Any) -> str:
  if value is None:
    return 'n/a'
  return f'{value:.3f}' if isinstance(value, float) else str(value)


def _markdown(title: str, report: Mapping[str, dict], plot_files: Sequence[str]) -> str:
  depths = sorted({int(k) for r in report.values() for k in (r.get('asr_at_k') or {})})
  shown = [d for d in (0, depths[-1] if depths else None) if d is not None]
  shown = sorted(set(shown))
  header = (['model'] + [f'ASR@{k}' for k in shown]
            + ['benign helpfulness', 'over-refusal', 'mean harm horizon', 'total KL (nats)'])
  lines = [f'# {title}', '',
           'Results per model (ASR@k: harm rate when the first k tokens of a harmful answer are '
           'prefilled; harm horizon: first position where the harm is decided).', '',
           '| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for name, r in report.items():
    asr = r.get('asr_at_k') or {}
    kl = r.get('kl_per_position')
    total_kl = None if kl is None else float(sum(v for v in kl if v is not None))
    row = ([name] + [_fmt(asr.get(str(k))) for k in shown]
           + [_fmt(r.get('benign_helpfulness')), _fmt(r.get('over_refusal')),
              _fmt(r.get('harm_horizon_mean')), _fmt(total_kl)])
    lines.append('| ' + ' | '.join(row) + ' |')
  lines += ['', 'The full numbers (per depth, per position, with standard errors) are in '
            '`report.json`.', '']
  for fname in plot_files:
    heading, text = plot_info(fname)
    lines += [f'## {heading}', '', f'![{heading}](plots/{fname})', '', text, '']
  return '\n'.join(lines)


def write_report(results: Mapping[str, Mapping[str, Any]], out_dir: str,
                 metrics: Mapping[str, str] | None = None,
                 title: str = 'deepalign: shallow vs. deep alignment',
                 kinds: Mapping[str, str] | None = None, seed: int | None = None) -> dict:
  """Write out_dir/report.json, out_dir/report.md and out_dir/plots/*.png.

  Args:
    results: {model name: entry} with the REQUIRED_KEYS (see the module docstring), e.g. from
      `entry_from_estimates`.
    out_dir: the study's workdir (created if missing).
    metrics: {run name: path to a metrics.jsonl or its workdir} for the training curves, one
      plot per kind of stage (plots/training_<kind>.png); skipped when None.
    title: the heading of report.md.
    kinds: {run name: kind of stage} ('sft', 'reward_model', 'dpo', 'ppo', 'ppo_recovery',
      'grpo'); a run not named is read off its metric names.
    seed: the seed the models were trained and measured with (in every plot's caption).
  Returns:
    The report dict written to report.json.
  """
  if not results:
    raise UserError('report: no model results given; pass {model name: results}.')
  report = {str(name): normalize_entry(str(name), entry) for name, entry in results.items()}
  # Read every input before writing anything, so a bad path leaves the workdir untouched.
  curves = {name: read_metrics_jsonl(path) for name, path in (metrics or {}).items()}
  plot_dir = os.path.join(out_dir, 'plots')
  os.makedirs(plot_dir, exist_ok=True)
  written = []

  def out(fname):
    written.append(fname)
    return os.path.join(plot_dir, fname)

  def measured(*keys: str) -> bool:  # a plot no model has numbers for is left out
    return any(r.get(k) is not None for r in report.values() for k in keys)

  def note(*parts: str) -> str:
    return plots.caption(*parts, seed=seed)

  if measured('asr_at_k'):
    plots.plot_asr(report, out('asr_vs_prefill_depth.png'),
                   note('ASR@k: fraction of held-out harmful prompts answered harmfully when the '
                        'first k tokens of a harmful answer are prefilled'))
  if measured('kl_per_position'):
    plots.plot_profile(report, 'kl_per_position', 'KL(policy || reference) at t (nats)',
                       'Per-position KL to the reference', out('kl_per_position.png'),
                       se_key='kl_per_position_se',
                       note=note('KL in nats per position, on the harmful answers'))
  if measured('grad_norm_per_position', 'grad_norm_recovery_per_position'):
    plots.plot_grad_norms(report, out('grad_norm_per_position.png'),
                          note('||g_t||: L2 norm over all parameters of the gradient of the '
                               'expected harm (harm in [0, 1]) at position t, noise-corrected '
                               'in figures.json'))
  if measured('harm_information'):
    plots.plot_profile(report, 'harm_information', 'harm information I_t = E[D_t^2] (harm^2)',
                       'Harm information per position', out('harm_information.png'),
                       se_key='harm_information_se',
                       note=note('I_t in harm^2 (harm in [0, 1]); sum_t I_t = Var(h)'))
  if measured('harm_horizon_hist'):
    plots.plot_horizon(report, out('harm_horizon_hist.png'),
                       note('tau in response positions'))
  if measured('benign_helpfulness'):
    plots.plot_benign(report, out('benign_helpfulness.png'),
                      note('fractions of held-out benign prompts; bars: ±2 SE'))
  by_kind: dict[str, dict[str, list]] = {}
  for name, rows in curves.items():
    kind = (kinds or {}).get(name) or infer_kind(rows)
    by_kind.setdefault(plots.KIND_OF.get(kind, kind), {})[name] = rows
  for kind, runs in by_kind.items():
    plots.plot_training_curves(runs, out(training_plot_name(kind)), kind=kind,
                               title=f'Training curves: {KIND_TITLES.get(kind, kind)}',
                               note=note('x: steps as in metrics.jsonl'))
  atomic_files.write_json_atomic(os.path.join(out_dir, 'report.json'), report)
  atomic_files.write_text_atomic(os.path.join(out_dir, 'report.md'),
                                 _markdown(title, report, written))
  return report
