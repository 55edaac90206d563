"""One table and one plot of a sweep: every run's overrides, status and results.

  python -m launch.summarize --sweep_dir=runs/rec_sweep --metric=eval/harm_at_3 --x=recovery.coef

reads WORKDIR/sweep.json (written by launch/sweep.py) and, of every run, its workdir's
results.json, report.json (a study or evaluation; nested keys joined by '/') and the last value
of every metric in metrics.jsonl, and writes into --out (default: the sweep directory)
  summary.csv    every run: name, status, overrides, every value found
  summary.md     the runs with their overrides and the --metric (and --columns), then the mean
                 of the metric at each value of --x over the other overrides, with its standard
                 deviation (the spread over e.g. seeds) and the number of runs
  <metric>_vs_<x>.png   the metric against --x, one line per value of the other overrides (e.g.
                 one per seed), and their mean with a ±1 standard deviation band
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import re
import sys
from typing import Any, Mapping, Sequence

from deepalign.errors import UserError

MANIFEST = 'sweep.json'


def _path(p: str):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(p)


def _flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      out.update(_flatten(value, name + '/'))
    elif isinstance(value, (int, float, str, bool)) or value is None:
      out[name] = value
  return out


def _read_json(path) -> dict:
  if not path.exists():
    return {}
  try:
    value = json.loads(path.read_text())
  except json.JSONDecodeError:
    return {}
  return value if isinstance(value, dict) else {}


def run_values(workdir: str) -> dict[str, Any]:
  """The last value of every metric in metrics.jsonl, then results.json, then report.json."""
  directory = _path(workdir)
  values: dict[str, Any] = {}
  metrics = directory / 'metrics.jsonl'
  if metrics.exists():
    for line in metrics.read_text().splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill mid-write
      values.update({k: v for k, v in row.items() if v is not None})
  for name in ('results.json', 'report.json'):
    values.update(_flatten(_read_json(directory / name)))
  return values


def collect(sweep_dir: str) -> list[dict[str, Any]]:
  """[{'name', 'status', 'overrides': {...}, 'values': {...}}, ...] in the sweep's order."""
  manifest = _read_json(_path(sweep_dir) / MANIFEST)
  if not manifest.get('runs'):
    raise UserError(f'{sweep_dir}/{MANIFEST} not found or lists no runs; run launch/sweep.py first')
  return [{'name': r['name'], 'status': r.get('status', ''), 'overrides': dict(r['overrides']),
           'values': run_values(r['workdir'])} for r in manifest['runs']]


def _number(value: Any) -> float:
  try:
    return float(value)
  except (TypeError, ValueError):
    return math.nan


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for one value)."""
  n = len(values)
  mean = sum(values) / n
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
  return mean, std


def _override_keys(runs: Sequence[Mapping[str, Any]]) -> list[str]:
  keys: list[str] = []
  for run in runs:
    keys += [k for k in run['overrides'] if k not in keys]
  return keys


def _group(run: Mapping[str, Any], x: str, keys: Sequence[str]) -> str:
  """The run's other overrides, as the plot's legend names them ('seed=0'); '' for none."""
  return ', '.join(f'{k}={run["overrides"][k]}' for k in keys if k != x and k in run['overrides'])


def by_x(runs: Sequence[Mapping[str, Any]], metric: str, x: str) -> list[tuple[Any, float, float, int]]:
  """[(x value, mean of the metric over the other overrides, its std, n)], x in the sweep's order."""
  points: dict[Any, list[float]] = {}
  for run in runs:
    if x in run['overrides']:
      y = _number(run['values'].get(metric))
      points.setdefault(run['overrides'][x], [])
      if math.isfinite(y):
        points[run['overrides'][x]].append(y)
  return [(value, *(_mean_std(ys) if ys else (math.nan, math.nan)), len(ys)) for value, ys in points.items()]


def _fmt(value: Any) -> str:
  if isinstance(value, float):
    return 'nan' if math.isnan(value) else f'{value:.4g}'
  return '' if value is None else str(value)


def csv_text(runs: Sequence[Mapping[str, Any]]) -> str:
  keys = _override_keys(runs)
  value_keys = sorted({k for r in runs for k in r['values']} - set(keys))
  out = io.StringIO()
  writer = csv.writer(out)
  writer.writerow(['name', 'status', *keys, *value_keys])
  for r in runs:
    writer.writerow([r['name'], r['status'], *(r['overrides'].get(k, '') for k in keys),
                     *(r['values'].get(k, '') for k in value_keys)])
  return out.getvalue()


def markdown(runs: Sequence[Mapping[str, Any]], metric: str, x: str | None,
             columns: Sequence[str] = ()) -> str:
  keys = _override_keys(runs)
  shown = [metric, *[c for c in columns if c != metric]]
  lines = [f'# Sweep: {metric}' + (f' against {x}' if x else ''), '',
           '| run | status | ' + ' | '.join(keys + shown) + ' |',
           '|' + '---|' * (2 + len(keys) + len(shown))]
  for r in runs:
    cells = [r['name'], r['status'], *(_fmt(r['overrides'].get(k, '')) for k in keys),
             *(_fmt(r['values'].get(c, '')) for c in shown)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if x:
    lines += ['', f'{metric} at each {x}: the mean over the other overrides ± its standard deviation '
              '(n = runs with the metric).', '', f'| {x} | mean | std | n |', '|---|---|---|---|']
    lines += [f'| {_fmt(v)} | {_fmt(m)} | {_fmt(s)} | {n} |' for v, m, s, n in by_x(runs, metric, x)]
  return '\n'.join(lines) + '\n'


def plot(runs: Sequence[Mapping[str, Any]], metric: str, x: str, path: str) -> None:
  """The metric against x: a line per value of the other overrides, and their mean ± std."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  from deepalign.train import atomic_files  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  keys = _override_keys(runs)
  lines: dict[str, list[tuple[float, float]]] = {}
  for run in runs:
    if x in run['overrides']:
      point = (_number(run['overrides'][x]), _number(run['values'].get(metric)))
      if all(math.isfinite(v) for v in point):
        lines.setdefault(_group(run, x, keys), []).append(point)
  if not lines:
    raise UserError(f'no run has both a numeric {x} and the metric {metric}; see summary.csv for '
                    'the names of the metrics the runs wrote')
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, points in lines.items():
    xs, ys = zip(*sorted(points))
    ax.plot(xs, ys, marker='o', linewidth=1, alpha=0.6, label=label or None)
  if len(lines) > 1:
    stats = sorted((_number(v), m, s) for v, m, s, n in by_x(runs, metric, x)
                   if n and math.isfinite(_number(v)))
    xs, means, stds = zip(*stats)
    ax.plot(xs, means, color='black', linewidth=2, label='mean')
    ax.fill_between(xs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                    color='black', alpha=0.15, label='±1 std')
  ax.set_xlabel(x)
  ax.set_ylabel(metric)
  ax.grid(alpha=0.3)
  if any(lines):  # some line has a label ('seed=0'); one unlabelled line needs no legend
    ax.legend(fontsize=8)
  fig.tight_layout()
  buffer = io.BytesIO()  # written whole or not at all (a kill never leaves a truncated PNG)
  fig.savefig(buffer, format='png', dpi=120)
  plt.close(fig)
  atomic_files.write_bytes_atomic(path, buffer.getvalue())


def plot_name(metric: str, x: str) -> str:
  return re.sub(r'[^A-Za-z0-9._=-]+', '_', f'{metric}_vs_{x}') + '.png'


def summarize(sweep_dir: str, metric: str, x: str | None = None, out: str | None = None,
              columns: Sequence[str] = ()) -> dict[str, str]:
  """Writes summary.csv, summary.md (and the plot, with x); returns {what: path}."""
  runs = collect(sweep_dir)
  out_dir = _path(out or sweep_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = {'csv': str(out_dir / 'summary.csv'), 'markdown': str(out_dir / 'summary.md')}
  (out_dir / 'summary.csv').write_text(csv_text(runs))
  (out_dir / 'summary.md').write_text(markdown(runs, metric, x, columns))
  if x:
    if not any(x in r['overrides'] for r in runs):
      raise UserError(f"--x={x} is not an override of this sweep; its overrides: "
                      f"{', '.join(_override_keys(runs))}")
    written['plot'] = str(out_dir / plot_name(metric, x))
    plot(runs, metric, x, written['plot'])
  return written


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(prog='python -m launch.summarize', description=__doc__.split('\n\n')[0])
  p.add_argument('--sweep_dir', required=True, help='the --workdir of launch/sweep.py')
  p.add_argument('--metric', required=True, help='e.g. eval/harm_at_3 (metrics.jsonl), or a '
                 'results.json / report.json key (nested keys joined by /)')
  p.add_argument('--x', default=None, help='the override on the x axis, e.g. recovery.coef')
  p.add_argument('--columns', default='', help='more values for the markdown table, comma-separated')
  p.add_argument('--out', default=None, help='output directory (default: --sweep_dir)')
  args = p.parse_args(argv)
  try:
    written = summarize(args.sweep_dir, args.metric, args.x, args.out,
                        [c for c in args.columns.split(',') if c])
  except UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  for what, path in written.items():
    print(f'{what}: {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
