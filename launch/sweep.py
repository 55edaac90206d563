"""Config-override sweeps: a Python sweep file expanded into runs, run locally or on TPU VMs.

  python -m launch.sweep --config=configs/ppo_recovery.py:toy --sweep=sweeps/recovery_coef.py \\
      --workdir=runs/rec_sweep [-- --config.train.num_steps=200]

A sweep file defines `sweep()`, returning one dict of overrides per run:

  from launch.sweep import product
  def sweep():
    return product({'recovery.coef': (0.5, 1.0, 2.0), 'seed': (0, 1, 2)})

Every run gets a name made of its overrides (`recovery.coef=0.5__seed=0`: stable, filesystem
safe, unique within the sweep) and the workdir WORKDIR/<name>; WORKDIR/sweep.json lists them
with their status. Every run's overrides (and the ones after `--`, given to all runs) are
checked against the base config first: an unknown key or a value of the wrong type stops the
whole sweep, nearest keys named, before anything runs or is written.

Locally the runs go one after another, each `python -m deepalign.main` in its own process (a
crash stays in its run): a finished run is skipped, an interrupted one resumes (that is what
re-running `deepalign.main` on its workdir does), a failed one is recorded with its error line
(its output in WORKDIR/logs/<name>.log) and the sweep goes on. `--tpu='--accelerator_type=v5p-32
--zone=us-east5-a ...'` gives each run its own TPU VM through `launch/tpu.py` instead (WORKDIR on
gs://); `--dry_run` prints the command of every run and runs nothing.
`python -m launch.summarize --sweep_dir=WORKDIR ...` tabulates and plots the results.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from typing import Any, Mapping, Sequence

import ml_collections

from deepalign.errors import UserError
from launch import overrides as overrides_lib

MANIFEST = 'sweep.json'
_UNSAFE = re.compile(r'[^A-Za-z0-9._=+-]+')
_MAX_NAME = 96


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of the axes' values, the last axis varying fastest:
  product({'a': (1, 2), 'b': (0, 1)}) = [{'a': 1, 'b': 0}, {'a': 1, 'b': 1}, {'a': 2, 'b': 0}, ...]."""
  keys = list(axes)
  return [dict(zip(keys, values)) for values in itertools.product(*(tuple(axes[k]) for k in keys))]


def load_sweep(path: str) -> list[dict[str, Any]]:
  """The runs `sweep()` of the file at `path` returns: a non-empty list of {key: value} dicts."""
  if not os.path.isfile(path):
    raise UserError(f'sweep file {path} not found (--sweep=FILE.py defining sweep())')
  spec = importlib.util.spec_from_file_location('_deepalign_sweep', path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    runs = module.sweep()
  except AttributeError as e:
    raise UserError(f'sweep file {path} has no sweep() function ({e})') from e
  except Exception as e:
    raise UserError(f'sweep file {path} failed: {type(e).__name__}: {e}') from e
  if not isinstance(runs, (list, tuple)) or not runs or not all(
      isinstance(r, Mapping) and all(isinstance(k, str) for k in r) for r in runs):
    raise UserError(f'sweep() of {path} must return a non-empty list of dicts of overrides, '
                    "e.g. [{'recovery.coef': 0.5, 'seed': 0}, ...]")
  return [dict(r) for r in runs]


def _digest(overrides: Mapping[str, Any]) -> str:
  text = json.dumps({k: overrides_lib.flag_value(v) for k, v in overrides.items()}, sort_keys=True)
  return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_name(overrides: Mapping[str, Any]) -> str:
  """`key=value` pairs joined by '__', characters other than [A-Za-z0-9._=+-] as '-'; a long name
  keeps its head and ends in a digest of the overrides. The base config alone is 'base'."""
  parts = [f'{key}={overrides_lib.flag_value(value)}' for key, value in overrides.items()]
  name = _UNSAFE.sub('-', '__'.join(parts)).strip('-') or 'base'
  if len(name) > _MAX_NAME:
    name = f'{name[:_MAX_NAME - 9]}-{_digest(overrides)}'
  return name


@dataclasses.dataclass
class Run:
  name: str
  workdir: str
  overrides: dict[str, Any]      # this run's own overrides (the sweep file's values)
  config: ml_collections.ConfigDict  # the base config with every override applied (checked)


def expand(spec: str, sweep_runs: Sequence[Mapping[str, Any]], workdir: str,
           common: Mapping[str, str] | None = None) -> list[Run]:
  """The runs of a sweep, every override checked against the config `spec` names.

  common: the command line's overrides (strings), applied to every run before its own."""
  base = overrides_lib.load_config(spec)
  common = dict(common or {})
  overrides_lib.apply(spec, base, common)  # a typo there is reported once, not per run
  names: dict[str, list[int]] = {}
  for i, run in enumerate(sweep_runs):
    names.setdefault(run_name(run), []).append(i)
  seen: dict[str, int] = {}
  for i, run in enumerate(sweep_runs):
    key = json.dumps({k: overrides_lib.flag_value(v) for k, v in sorted(run.items())})
    if key in seen:
      raise UserError(f'the sweep lists the same overrides twice (runs {seen[key]} and {i}): {dict(run)}')
    seen[key] = i
  runs = []
  for i, run in enumerate(sweep_runs):
    name = run_name(run)
    if len(names[name]) > 1:  # e.g. 'a b' and 'a/b' both read a-b: the digest tells them apart
      name = f'{name[:_MAX_NAME - 9]}-{_digest(run)}'
    config = overrides_lib.apply(spec, base, {**common, **run}, where=f'sweep run {i} ({name})')
    runs.append(Run(name, _join(workdir, name), dict(run), config))
  return runs


def _join(directory: str, name: str) -> str:
  return f'{directory.rstrip("/")}/{name}' if '://' in directory else os.path.join(directory, name)


def local_command(spec: str, run: Run, common_flags: Sequence[str]) -> list[str]:
  """The `deepalign.main` command of a run (the common flags first, the run's own last)."""
  return [sys.executable, '-m', 'deepalign.main', f'--config={spec}', f'--workdir={run.workdir}',
          *common_flags, *overrides_lib.flags(run.overrides)]


def tpu_command(spec: str, run: Run, common_flags: Sequence[str], tpu_flags: Sequence[str],
                index: int, prefix: str) -> list[str]:
  """The `launch.tpu` command of a run: its own VM (named PREFIX-INDEX), the run's workdir."""
  from launch import tpu  # pylint: disable=g-import-not-at-top
  return [sys.executable, '-m', 'launch.tpu', f'--name={tpu.vm_name(f"{prefix}-{index}")}',
          f'--config={spec}', f'--workdir={run.workdir}', *tpu_flags, '--',
          *common_flags, *overrides_lib.flags(run.overrides)]


# --- Whether a run is done, from its workdir (local or gs://) ------------------------------------

def _path(p: str):
  from etils import epath  # pylint: disable=g-import-not-at-top
  return epath.Path(p)


def _last_checkpoint(workdir: str) -> int:
  directory = _path(workdir) / 'checkpoints'
  if not directory.exists():
    return -1
  return max((int(p.name) for p in directory.iterdir() if p.name.isdigit()), default=-1)


def is_finished(run: Run, status: str = '') -> bool:
  """A study or evaluation wrote report.json; a training stage wrote results.json, or (a stage
  without results) ran to its last step in an attempt that exited 0 (status 'finished')."""
  workdir = _path(run.workdir)
  if run.config.get('stage') in ('toy_study', 'safety_eval'):
    return (workdir / 'report.json').exists()
  if (workdir / 'results.json').exists():
    return True
  return status == 'finished' and _last_checkpoint(run.workdir) >= int(run.config.train.num_steps)


# --- The manifest --------------------------------------------------------------------------------

def _read_manifest(workdir: str) -> dict:
  path = _path(workdir) / MANIFEST
  if not path.exists():
    return {}
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError:
    return {}


def _write_manifest(workdir: str, manifest: dict) -> None:
  if '://' in workdir:
    (_path(workdir) / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + '\n')
    return
  from deepalign.train import atomic_files  # pylint: disable=g-import-not-at-top
  atomic_files.write_json_atomic(os.path.join(workdir, MANIFEST), manifest)


def _entry(run: Run, command: Sequence[str], old: Mapping[str, Any]) -> dict:
  return {'name': run.name, 'workdir': run.workdir,
          'overrides': {k: overrides_lib.flag_value(v) if not isinstance(v, (int, float, str, bool))
                        else v for k, v in run.overrides.items()},
          'command': shlex.join(command), 'status': old.get('status', 'pending'),
          'returncode': old.get('returncode'), 'error': old.get('error', ''),
          'seconds': old.get('seconds', 0.0), 'attempts': old.get('attempts', 0)}


def _error_line(output: str) -> str:
  """The `error: ...` line deepalign.main prints for a user error, else the last line."""
  lines = [line for line in output.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith('error: ')]
  return (errors or lines or [''])[-1][:500]


def _run_subprocess(command: Sequence[str], log_path: str) -> tuple[int, str]:
  os.makedirs(os.path.dirname(log_path), exist_ok=True)
  with open(log_path, 'w') as log:
    proc = subprocess.run(list(command), stdout=log, stderr=subprocess.STDOUT, check=False)
  with open(log_path) as log:
    return proc.returncode, _error_line(log.read())


def _run_in_process(run: Run) -> tuple[int, str]:
  """deepalign.main.run in this process (a test's or notebook's sweep): an exception fails only
  the run; exit status 2 for a UserError, 1 otherwise, as the command line."""
  from deepalign import main  # pylint: disable=g-import-not-at-top
  try:
    main.run(run.config, run.workdir)
  except UserError as e:
    return 2, f'error: {" ".join(str(e).split())}'
  except Exception as e:  # pylint: disable=broad-except
    return 1, f'{type(e).__name__}: {e}'[:500]
  return 0, ''


def run_sweep(spec: str, runs: Sequence[Run], workdir: str, common_flags: Sequence[str] = (),
              sweep_file: str = '', in_process: bool = False, tpu_flags: Sequence[str] | None = None,
              log=print) -> dict:
  """Runs every unfinished run, one after another; returns the manifest (also WORKDIR/sweep.json)."""
  old = {r['name']: r for r in _read_manifest(workdir).get('runs', [])}
  prefix = os.path.basename(workdir.rstrip('/')) or 'sweep'
  commands = [tpu_command(spec, run, common_flags, tpu_flags, i, prefix) if tpu_flags is not None
              else local_command(spec, run, common_flags) for i, run in enumerate(runs)]
  manifest = {'config': spec, 'sweep': sweep_file, 'common_overrides': list(common_flags),
              'runs': [_entry(run, cmd, old.get(run.name, {})) for run, cmd in zip(runs, commands)]}
  if '://' not in workdir:
    os.makedirs(workdir, exist_ok=True)
  _write_manifest(workdir, manifest)
  for i, (run, command, entry) in enumerate(zip(runs, commands, manifest['runs'])):
    if tpu_flags is None and is_finished(run, entry['status']):
      entry['status'] = 'finished'
      log(f'[{i + 1}/{len(runs)}] {run.name}: finished, skipped')
      continue
    log(f'[{i + 1}/{len(runs)}] {run.name}: running')
    start = time.time()
    if in_process and tpu_flags is None:
      returncode, error = _run_in_process(run)
    else:
      log_dir = os.path.join(workdir if '://' not in workdir else '.', 'logs')
      returncode, error = _run_subprocess(command, os.path.join(log_dir, f'{run.name}.log'))
    entry.update(returncode=returncode, seconds=round(time.time() - start, 1),
                 attempts=entry['attempts'] + 1)
    if returncode != 0:
      entry.update(status='failed', error=error)
    elif tpu_flags is None and not is_finished(run, 'finished'):
      entry.update(status='interrupted', error='stopped before its last step (preempted); '
                   're-run the sweep to resume it')
    else:
      entry.update(status='finished', error='')
    log(f'[{i + 1}/{len(runs)}] {run.name}: {entry["status"]}'
        + (f' ({entry["error"]})' if entry['error'] else ''))
    _write_manifest(workdir, manifest)
  _write_manifest(workdir, manifest)
  return manifest


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m launch.sweep', description=__doc__.split('\n\n')[0],
                              epilog='Overrides after -- (--config.a.b=v) apply to every run.')
  p.add_argument('--config', required=True, help='configs/FILE.py[:PRESET], the base of every run')
  p.add_argument('--sweep', required=True, help='a Python file defining sweep() -> [dict, ...]')
  p.add_argument('--workdir', required=True, help='the sweep directory (a local path or gs://...)')
  p.add_argument('--dry_run', action='store_true', help='print every run\'s command; run nothing')
  p.add_argument('--in_process', action='store_true',
                 help='run in this Python (faster start; a crash ends the sweep)')
  p.add_argument('--tpu', default=None, metavar='FLAGS',
                 help="each run on its own TPU VM: launch/tpu.py's flags, e.g. "
                      "'--accelerator_type=v5p-32 --zone=us-east5-a --provisioning=spot'")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  rest = argv[argv.index('--') + 1:] if '--' in argv else []
  args = _parser().parse_args(argv[:argv.index('--')] if '--' in argv else argv)
  try:
    common = overrides_lib.parse_flags(rest)
    runs = expand(args.config, load_sweep(args.sweep), args.workdir, common)
    tpu_flags = shlex.split(args.tpu) if args.tpu is not None else None
    if tpu_flags is not None and '://' not in args.workdir:
      raise UserError(f'--workdir={args.workdir} must be a gs:// path with --tpu: every TPU host '
                      'writes its checkpoint shards there and a recreated VM resumes from it')
    if args.dry_run:
      prefix = os.path.basename(args.workdir.rstrip('/')) or 'sweep'
      for i, run in enumerate(runs):
        command = (tpu_command(args.config, run, rest, tpu_flags, i, prefix) if tpu_flags is not None
                   else local_command(args.config, run, rest))
        print(shlex.join(['python', *command[1:]]))
      return 0
    manifest = run_sweep(args.config, runs, args.workdir, rest, args.sweep, args.in_process, tpu_flags)
  except UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    return 2
  failed = [r['name'] for r in manifest['runs'] if r['status'] != 'finished']
  print(f'{len(runs) - len(failed)} of {len(runs)} runs finished'
        + (f'; not finished: {", ".join(failed)}' if failed else '') + f' ({args.workdir}/{MANIFEST})')
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
