"""The toy study's last words on the console: what held, what was only explored, where to look.

  The papers' claims (Young 2026; Qi et al. 2024): 7 of 7 hold
    holds           base: standard gradient vanishes beyond the horizon   0.0057 (...)
    ...
  Exploratory rows (not claims of the papers; reported, not tested)
    bound met       base: recovery / standard ||g_t|| beyond the horizon ...
  Report: DIR/report.md
  Plots:  DIR/plots/ (asr_vs_prefill_depth.png, ...)

The claims' verdicts are "holds" / "does not hold"; the exploratory rows' are "bound met" /
"bound not met": nothing on screen reads like a failed study when only an exploratory bound
is missed. Whatever the verdicts, the command exits 0: a scientific outcome is not a crash.
"""

import os
from typing import Sequence

from deepalign.console import format_duration
from deepalign.study import figures

CLAIM_WORDS = {True: 'holds', False: 'does not hold', None: 'n/a'}
EXPLORATORY_WORDS = {True: 'bound met', False: 'bound not met', None: 'n/a'}
_MEASURED_CHARS = 100  # the console keeps the start of a long measurement; report.md has it all


def _rows(claims: Sequence[figures.Claim], words: dict) -> list[str]:
  width = max((len(c.name) for c in claims), default=0)
  out = []
  for c in claims:
    measured = c.measured if len(c.measured) <= _MEASURED_CHARS else (
        c.measured[:_MEASURED_CHARS - 3] + '...')
    out.append(f'  {words[c.holds]:<14} {c.name:<{width}}  {measured}')
  return out


def timing(total_s: float, train_s: float, analysis_s: float) -> str:
  return (f'toy study done in {format_duration(total_s)} (training {format_duration(train_s)}, '
          f'analysis {format_duration(analysis_s)})')


def text(claims: Sequence[figures.Claim], exploratory: Sequence[figures.Claim], workdir: str,
         plot_files: Sequence[str], header: str = '') -> str:
  """The summary the study prints when it is done (see the module docstring)."""
  tested = [c for c in claims if c.holds is not None]
  held = sum(bool(c.holds) for c in tested)
  lines = [header] if header else []
  lines += ['', f'{figures.CLAIMS_HEADING}: {held} of {len(tested)} hold'
            + (f' ({len(claims) - len(tested)} not measured: their models were not trained)'
               if len(tested) < len(claims) else '')]
  lines += _rows(claims, CLAIM_WORDS)
  if exploratory:
    lines += ['', f'{figures.EXPLORATORY_HEADING}; reported, not tested']
    lines += _rows(exploratory, EXPLORATORY_WORDS)
  lines += ['', f'Report: {os.path.join(workdir, "report.md")}']
  if plot_files:
    lines.append(f'Plots:  {os.path.join(workdir, "plots")}/ ({", ".join(plot_files)})')
  return '\n'.join(lines) + '\n'
