"""The study's figures as PNGs (matplotlib, Agg backend: no display needed).

Each function takes the per-model results (the report.json entries, see report.py) and
writes one figure. Models keep the same colour across figures.
"""

import math
from typing import Mapping, Sequence

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402

Results = Mapping[str, Mapping]
POSITION_LABEL = 'response position t (1 = first response token)'


def _colors(names: Sequence[str]) -> dict[str, str]:
  cycle = plt.rcParams['axes.prop_cycle'].by_key()['color']
  return {name: cycle[i % len(cycle)] for i, name in enumerate(names)}


def _values(seq) -> np.ndarray | None:
  if seq is None:
    return None
  return np.asarray([np.nan if v is None else v for v in seq], float)


def _save(fig, path: str) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=120, bbox_inches='tight')  # keeps legends placed outside the axes
  plt.close(fig)


def _positive_log_scale(ax, arrays: list[np.ndarray]) -> None:
  """Log y when everything plotted is positive (profiles span decades); linear otherwise."""
  finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
  if finite.size and np.all(finite > 0):
    ax.set_yscale('log')


def plot_asr(results: Results, path: str) -> None:
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
  ax.legend()
  _save(fig, path)


def plot_profile(results: Results, key: str, ylabel: str, title: str, path: str,
                 se_key: str | None = None) -> None:
  """A per-position profile (results[name][key], list over t = 1..T), one line per model."""
  fig, ax = plt.subplots(figsize=(6, 4))
  colors = _colors(list(results))
  plotted, shaded = [], False
  for name, r in results.items():
    y = _values(r.get(key))
    if y is None or not y.size:
      continue
    t = np.arange(1, len(y) + 1)
    ax.plot(t, y, marker='.', label=name, color=colors[name])
    se = _values(r.get(se_key)) if se_key else None
    if se is not None and se.shape == y.shape:
      ax.fill_between(t, y - 2 * se, y + 2 * se, color=colors[name], alpha=0.2, linewidth=0)
      shaded = True
    plotted.append(y)
  _positive_log_scale(ax, plotted)
  ax.xaxis.set_major_locator(MaxNLocator(integer=True))
  ax.set_xlabel(POSITION_LABEL)
  ax.set_ylabel(ylabel)
  ax.set_title(title + (' (shaded: ±2 SE)' if shaded else ''))
  ax.grid(alpha=0.3)
  if plotted:
    ax.legend()
  _save(fig, path)


def plot_grad_norms(results: Results, path: str) -> None:
  """||g_t|| of the standard objective (left) and of the recovery objective (right), one line
  per model, the legend outside the axes (ten models would cover the curves)."""
  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  colors = _colors(list(results))
  plotted, handles = [], {}
  for ax, key, title in ((axes[0], 'grad_norm_per_position', 'objective E[h] (own responses)'),
                         (axes[1], 'grad_norm_recovery_per_position',
                          'recovery objective (after a harmful prefix)')):
    for name, r in results.items():
      y = _values(r.get(key))
      if y is None or not y.size:
        continue
      y = np.where(y > 0, y, np.nan)  # log scale: a zero (past the answer) is left out
      (line,) = ax.plot(np.arange(1, len(y) + 1), y, marker='.', color=colors[name], label=name)
      handles.setdefault(name, line)
      plotted.append(y)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(POSITION_LABEL)
    ax.set_title(title, fontsize='medium')
    ax.grid(alpha=0.3)
  if any(np.any(np.isfinite(y)) for y in plotted):
    axes[0].set_yscale('log')  # the profiles span decades (a refusing model's is ~1e-3)
  axes[0].set_ylabel('gradient norm ||g_t|| (L2 over all parameters)')
  fig.suptitle('Harm gradient per response position')
  if handles:
    fig.legend(list(handles.values()), list(handles), loc='center left',
               bbox_to_anchor=(0.99, 0.5), fontsize='small', frameon=False)
  _save(fig, path)


def plot_horizon(results: Results, path: str) -> None:
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
    ax.legend()
  _save(fig, path)


def plot_training_curves(curves: Mapping[str, Sequence[Mapping]], path: str,
                         keys: Sequence[str] | None = None, max_panels: int = 12) -> None:
  """One panel per metric (metrics.jsonl rows {'step': s, name: value}), one line per run.

  keys: the metrics to draw; default every numeric metric found, alphabetical, at most
  `max_panels`.
  """
  if keys is None:
    found = set()
    for rows in curves.values():
      for row in rows:
        found.update(k for k, v in row.items()
                     if k != 'step' and isinstance(v, (int, float)) and not isinstance(v, bool))
    keys = sorted(found)[:max_panels]
  keys = list(keys)
  cols = min(3, max(len(keys), 1))
  nrows = max(math.ceil(len(keys) / cols), 1)
  fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
  colors = _colors(list(curves))
  for ax, key in zip(axes.flat, keys):
    for name, rows in curves.items():
      pts = [(row['step'], row[key]) for row in rows
             if row.get(key) is not None and 'step' in row]
      if pts:
        steps, vals = zip(*pts)
        ax.plot(steps, vals, label=name, color=colors[name])
    ax.set_title(key)
    ax.set_xlabel('training step')
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(keys):]:
    ax.axis('off')
  if keys:
    axes.flat[0].legend(fontsize='small')
  else:
    axes.flat[0].text(0.5, 0.5, 'no metrics.jsonl rows', ha='center', va='center')
  fig.suptitle('Training curves (from metrics.jsonl)')
  _save(fig, path)
