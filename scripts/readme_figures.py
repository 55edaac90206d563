"""The README's toy-study figures, redrawn from a finished study's data at a small resolution.

  python scripts/readme_figures.py --run=runs/toy --out=docs/toy_study [--dpi=72]

Reads RUN/report.json, RUN/config.json and each run's RUN/<run>/metrics.jsonl, draws every plot
of the report again (deepalign.analysis.report.write_report, into a temporary directory, at
`--dpi`) and copies the ones the README shows (FIGURES) to OUT. Same data, same code as the
study's own plots/; only the resolution differs, so the committed PNGs stay small.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FIGURES = ('asr_vs_prefill_depth.png', 'grad_norm_per_position.png', 'kl_per_position.png',
           'harm_information.png', 'harm_horizon_hist.png', 'training_ppo.png',
           'training_sft.png')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--run', required=True, help='the toy study workdir')
  parser.add_argument('--out', required=True, help='where the PNGs go')
  parser.add_argument('--dpi', type=int, default=72)
  args = parser.parse_args()
  from deepalign.analysis import plots, report as report_lib
  from deepalign.study import runs
  with open(os.path.join(args.run, 'report.json')) as f:
    results = json.load(f)
  with open(os.path.join(args.run, 'config.json')) as f:
    config = json.load(f)
  order = [r.name for r in runs.RUNS]  # the study's order, so each model keeps its colour
  results = {n: results[n] for n in sorted(results, key=lambda n: (n not in order, order.index(n)
                                                                   if n in order else 0, n))}
  names = [r.name for r in runs.RUNS if os.path.isfile(os.path.join(args.run, r.name, 'metrics.jsonl'))]
  plots.DPI = args.dpi
  with tempfile.TemporaryDirectory() as tmp:
    report_lib.write_report(results, tmp, metrics={n: os.path.join(args.run, n) for n in names},
                            kinds={n: runs.BY_NAME[n].config_file for n in names},
                            seed=int(config['seed']))
    os.makedirs(args.out, exist_ok=True)
    for name in FIGURES:
      shutil.copyfile(os.path.join(tmp, 'plots', name), os.path.join(args.out, name))
      print(f'{os.path.join(args.out, name)}: {os.path.getsize(os.path.join(args.out, name))} bytes')


if __name__ == '__main__':
  main()
