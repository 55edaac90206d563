"""The study's figures as PNGs (matplotlib, Agg backend: no display needed).

Each function takes the per-model results (the report.json entries, see report.py) and
writes one figure. Models keep the same colour across figures.
"""

import dataclasses
import io
import math
import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

from deepalign.train import atomic_files  # noqa: E402

Results = Mapping[str, Mapping]
DPI = 110  # of every figure; scripts/readme_figures.py writes the README's copies at less
POSITION_LABEL = 'response position t (1 = first response token)'


def _colors(names: Sequence[str]) -> dict[str, str]:
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _values(seq) -> np.ndarray | None:
  if seq is None:
    return None
  return np.asarray([np.nan if v is None else v for v in seq], float)


def _save(fig, path: str, caption: str = '') -> None:
  """Writes the figure, `caption` (units, the seed) in small type under it."""
  fig.tight_layout()
  if caption:
    fig.text(0.01, 0.0, caption, ha='left', va='top', fontsize='small', color='0.3', wrap=True)
  # Rendered in memory, then written atomically: a kill mid-write keeps the old image, never a
  # truncated one (and the same call writes gs:// workdirs).
  buffer = io.BytesIO()
  fig.savefig(buffer, format=os.path.splitext(os.fspath(path))[1][1:] or 'png', dpi=DPI,
              bbox_inches='tight')  # keeps legends and the caption in the image
  plt.close(fig)
  atomic_files.write_bytes_atomic(path, buffer.getvalue())


def caption(*parts: str, seed: int | None = None) -> str:
  """'part; part; seed N' (the parts that are given)."""
  return '; '.join([p for p in parts if p] + ([f'seed {seed}'] if seed is not None else []))


FOCUS = ('base', 'ppo', 'ppo_recovery')  # the models the theory is about: drawn in their own panel


def split_focus(names: Sequence[str], focus: Sequence[str] = FOCUS) -> tuple[list[str], list[str]]:
  """(the focus models present, in `focus` order; the others, in their order)."""
  return [n for n in focus if n in names], [n for n in names if n not in focus]


def _panel_groups(results: Results) -> list[tuple[str, list[str]]]:
  """[(panel title, model names)]: the focus models, then the others (when there are both)."""
  focus, others = split_focus(list(results))
  if focus and others:
    return [(f'{", ".join(focus)}', focus), ('the other models', others)]
  return [('', list(results))]


def _positive_log_scale(ax, arrays: list[np.ndarray]) -> None:
  """Log y when everything plotted is positive (profiles span decades); linear otherwise."""
  finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
  if finite.size and np.all(finite > 0):
    ax.set_yscale('log')


def plot_asr(results: Results, path: str, note: str = '') -> None:
  """ASR@k against the prefill depth k, one line per model (error bars when SEs are given)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  colors = _colors(list(results))
  bars = False
  for name, r in results.items():
    asr = r.get('asr_at_k') or {}
    if not asr:
      continue
    ks = sorted(asr, key=int)
    se = r.get('asr_at_k_se') or {}
    y = [asr[k] for k in ks]
    yerr = [2 * (se.get(k, 0.0) or 0.0) for k in ks] if se else None
    bars = bars or bool(se)
    ax.errorbar([int(k) for k in ks], y, yerr=yerr, marker='o', capsize=3, label=name,
                color=colors[name])
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel('prefill depth k (harmful tokens forced before the model writes)')
  ax.set_ylabel('attack success rate ASR@k (fraction harmful)')
  ax.set_ylim(-0.03, 1.03)
  ax.set_title('Prefill attack: harm vs. depth of the harmful prefix'
               + (' (bars: ±2 SE)' if bars else ''))
  ax.grid(alpha=0.3)
  ax.legend(fontsize='small', ncol=2)
  _save(fig, path, note)


def plot_profile(results: Results, key: str, ylabel: str, title: str, path: str,
                 se_key: str | None = None, note: str = '') -> None:
  """A per-position profile (results[name][key], list over t = 1..T), one line per model: the
  focus models (base, ppo, ppo_recovery) in one panel, the others in a second, same y scale."""
  groups = _panel_groups(results)
  fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), sharey=True,
                           squeeze=False)
  colors = _colors(list(results))
  plotted, shaded = [], False
  for ax, (panel, names) in zip(axes[0], groups):
    drawn = False
    for name in names:
      y = _values(results[name].get(key))
      if y is None or not y.size:
        continue
      t = np.arange(1, len(y) + 1)
      ax.plot(t, y, marker='.', label=name, color=colors[name])
      se = _values(results[name].get(se_key)) if se_key else None
      if se is not None and se.shape == y.shape:
        ax.fill_between(t, y - 2 * se, y + 2 * se, color=colors[name], alpha=0.2, linewidth=0)
        shaded = True
      plotted.append(y)
      drawn = True
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(POSITION_LABEL)
    ax.set_title(panel, fontsize='medium')
    ax.grid(alpha=0.3)
    if drawn:
      ax.legend(fontsize='small')
  _positive_log_scale(axes[0][0], plotted)
  axes[0][0].set_ylabel(ylabel)
  fig.suptitle(title + (' (shaded: ±2 SE)' if shaded else ''))
  _save(fig, path, note)


def plot_grad_norms(results: Results, path: str, note: str = '') -> None:
  """||g_t|| of the standard objective (left) and of the recovery objective (right), one line
  per model; the focus models (base, ppo, ppo_recovery) in the top row, the others below (ten
  models on one axis cannot be told apart). A legend on every panel; one log y scale."""
  groups = _panel_groups(results)
  fig, axes = plt.subplots(len(groups), 2, figsize=(11, 3.6 * len(groups)), sharey=True,
                           squeeze=False)
  colors = _colors(list(results))
  plotted = []
  objectives = (('grad_norm_per_position', 'objective E[h] (own responses)'),
                ('grad_norm_recovery_per_position', 'recovery objective (after a harmful prefix)'))
  for row, (panel, names) in zip(axes, groups):
    for ax, (key, title) in zip(row, objectives):
      drawn = False
      for name in names:
        y = _values(results[name].get(key))
        if y is None or not y.size:
          continue
        y = np.where(y > 0, y, np.nan)  # log scale: a zero (past the answer) is left out
        ax.plot(np.arange(1, len(y) + 1), y, marker='.', color=colors[name], label=name)
        plotted.append(y)
        drawn = True
      ax.xaxis.set_major_locator(MaxNLocator(integer=True))
      ax.set_xlabel(POSITION_LABEL)
      ax.set_title(f'{title}: {panel}' if panel else title, fontsize='medium')
      ax.grid(alpha=0.3)
      if drawn:
        ax.legend(fontsize='small')
    row[0].set_ylabel('||g_t|| (L2 over all parameters)')
  if any(np.any(np.isfinite(y)) for y in plotted):
    axes[0][0].set_yscale('log')  # the profiles span decades (a refusing model's is ~1e-3)
  fig.suptitle('Harm gradient per response position')
  _save(fig, path, note)


def plot_benign(results: Results, path: str, note: str = '') -> None:
  """Benign helpfulness and over-refusal per model (bars, ±2 SE when given)."""
  names = [n for n, r in results.items() if r.get('benign_helpfulness') is not None]
  fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(names) + 2), 4))
  x = np.arange(len(names))
  for offset, key, label, color in ((-0.2, 'benign_helpfulness', 'helpful answer', 'tab:green'),
                                    (0.2, 'over_refusal', 'refused (over-refusal)', 'tab:red')):
    y = [float(results[n].get(key) or 0.0) for n in names]
    se = [2 * float(results[n].get(f'{key}_se') or 0.0) for n in names]
    ax.bar(x + offset, y, width=0.4, yerr=se, capsize=2, label=label, color=color)
  ax.set_xticks(x, names, rotation=30, ha='right')
  ax.set_ylim(0, 1.05)
  ax.set_ylabel('fraction of benign prompts')
  ax.set_title('Benign prompts: helpful answers and refusals')
  ax.grid(alpha=0.3, axis='y')
  ax.legend(fontsize='small')
  _save(fig, path, note)


def plot_horizon(results: Results, path: str, note: str = '') -> None:
  """Distribution of the harm horizon tau (bars) or, without a histogram, its mean (line)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  colors = _colors(list(results))
  names = list(results)
  width = 0.8 / max(len(names), 1)
  for i, name in enumerate(names):
    r = results[name]
    hist = _values(r.get('harm_horizon_hist'))
    if hist is not None and hist.size:
      t = np.arange(len(hist))
      ax.bar(t + (i - (len(names) - 1) / 2) * width, hist, width=width, color=colors[name],
             label=f'{name} (mean {r.get("harm_horizon_mean", float("nan")):.2f})')
    elif r.get('harm_horizon_mean') is not None:
      ax.axvline(r['harm_horizon_mean'], color=colors[name], linestyle='--',
                 label=f'{name} (mean {r["harm_horizon_mean"]:.2f})')
  ax.set_xlabel('harm horizon tau (position where the harm is decided; 0 = by the prompt)')
  ax.set_ylabel('fraction of responses')
  ax.set_title('Harm horizon: how early each response decides its harm')
  ax.grid(alpha=0.3, axis='y')
  if names:
    ax.legend(fontsize='small')
  _save(fig, path, note)


@dataclasses.dataclass(frozen=True)
class Panel:
  """One training-curve panel: the metrics.jsonl key it draws (the first of `keys` a run has)."""
  title: str
  ylabel: str
  keys: tuple[str, ...]


_LR = Panel('learning rate', 'learning rate (per optimizer step)', ('train/learning_rate',))
_RL = (
    Panel('reward of ordinary rollouts', 'reward (reward-model score)', ('train/reward/mean',)),
    Panel('KL to the reference', 'KL(policy || reference) (nats / response)', ('train/kl',)),
    Panel('harm on ordinary rollouts (harmful prompts)', 'fraction harmful (ASR@0)',
          ('train/harm/harmful_prompts', 'train/harm/ordinary')),
    Panel('harm on recovery rollouts (after a harmful prefix)', 'fraction harmful',
          ('train/recovery/harm_rate',)),
    Panel('policy entropy', 'entropy (nats / token)', ('train/policy/entropy',)),
    Panel('clip fraction', 'fraction of tokens clipped', ('train/clipfrac',)),
    Panel('value loss', 'value loss (squared error, reward units^2)', ('train/loss/value',)),
    _LR,
)
# The metric sets per kind of stage (deepalign/study/runs.py Run.config_file).
TRAINING_PANELS: dict[str, tuple[Panel, ...]] = {
    'sft': (
        Panel('training loss', 'NLL (nats / token)', ('train/loss',)),
        Panel('held-out NLL (eval)', 'NLL (nats / token)', ('eval/nll',)),
        Panel('harmful prompts answered harmfully (eval)', 'fraction harmful',
              ('eval/harm_at_0',)),
        Panel('benign prompts answered helpfully (eval)', 'fraction helpful', ('eval/helpful',)),
        Panel('gradient norm', '||g|| (L2, before clipping)', ('train/grad_norm',)),
        _LR),
    'reward_model': (
        Panel('training loss', 'Bradley-Terry loss (nats / pair)', ('train/loss',)),
        Panel('pair accuracy', 'fraction of pairs ranked right', ('train/accuracy',)),
        Panel('held-out pair accuracy (eval)', 'fraction of pairs ranked right',
              ('eval/accuracy',)),
        Panel('reward margin', 'r(chosen) - r(rejected) (reward units)', ('train/margin',)),
        _LR),
    'dpo': (
        Panel('training loss', 'DPO loss (nats / pair)', ('train/loss',)),
        Panel('implicit-reward accuracy', 'fraction of pairs ranked right',
              ('train/rewards/accuracies',)),
        Panel('implicit-reward margin', 'beta log-ratio margin (nats)', ('train/rewards/margins',)),
        Panel('held-out loss (eval)', 'loss (nats / pair)', ('eval/loss', 'eval/dpo_loss')),
        _LR),
    'ppo': _RL,
    'grpo': tuple(p for p in _RL if p.title != 'value loss'),
}
KIND_OF = {'ppo_recovery': 'ppo'}  # config files that share a kind's panels
STEP_LABEL = {'ppo': 'RL iteration (one batch of rollouts and its updates)',
              'grpo': 'RL iteration (one batch of rollouts and its updates)'}


def smooth(values: np.ndarray, weight: float) -> np.ndarray:
  """TensorBoard's smoothing: an exponential moving average, debiased at the start."""
  out, acc, norm = np.empty(len(values)), 0.0, 0.0
  for i, v in enumerate(values):
    acc, norm = weight * acc + (1 - weight) * v, weight * norm + (1 - weight)
    out[i] = acc / norm
  return out


def _series(rows: Sequence[Mapping], keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the first key in `keys` these rows have."""
  for key in keys:
    pts = [(row['step'], row[key]) for row in rows if row.get(key) is not None and 'step' in row]
    if pts:
      steps, vals = zip(*pts)
      return np.asarray(steps, float), np.asarray(vals, float)
  return np.empty(0), np.empty(0)


def plot_training_curves(curves: Mapping[str, Sequence[Mapping]], path: str,
                         kind: str = 'sft', title: str = '', note: str = '',
                         smoothing: float = 0.8) -> list[str]:
  """The chosen panels of `kind` (TRAINING_PANELS) for the runs in `curves` (metrics.jsonl rows
  {'step': s, name: value}): one line per run, smoothed, with the raw values faint behind it
  (series of fewer than 10 points are drawn raw, with markers). Panels no run has a metric for
  are left out; every drawn panel has a legend. Returns the titles of the panels drawn."""
  kind = KIND_OF.get(kind, kind)
  colors = _colors(list(curves))
  panels = [(p, {n: _series(rows, p.keys) for n, rows in curves.items()})
            for p in TRAINING_PANELS.get(kind, TRAINING_PANELS['sft'])]
  panels = [(p, series) for p, series in panels if any(len(x) for x, _ in series.values())]
  cols = min(3, max(len(panels), 1))
  nrows = max(math.ceil(len(panels) / cols), 1)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.4 * cols, 3.3 * nrows), squeeze=False)
  for ax, (panel, series) in zip(axes.flat, panels):
    for name, (x, y) in series.items():
      if not len(x):
        continue
      if len(x) < 10:
        ax.plot(x, y, marker='o', markersize=3, label=name, color=colors[name])
        continue
      ax.plot(x, y, color=colors[name], alpha=0.25, linewidth=0.8)
      ax.plot(x, smooth(y, smoothing), label=name, color=colors[name])
    ax.set_title(panel.title, fontsize='medium')
    ax.set_xlabel(STEP_LABEL.get(kind, 'training step'))
    ax.set_ylabel(panel.ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize='small')
  for ax in list(axes.flat)[len(panels):]:
    ax.axis('off')
  if not panels:
    axes.flat[0].text(0.5, 0.5, 'no metrics.jsonl rows', ha='center', va='center')
  fig.suptitle(title or f'Training curves: {kind} runs (from metrics.jsonl)')
  _save(fig, path, caption(f'faint: raw values; solid: smoothed (EMA {smoothing})', note))
  return [p.title for p, _ in panels]
