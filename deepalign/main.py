"""The command line: runs the stage a config names, in a workdir, resuming if it can.

  python -m deepalign.main --config=configs/FILE.py[:PRESET] --workdir=DIR [--config.a.b=v ...]

Every mistake a user can make on this line (unknown config key, wrong value type,
unknown preset, missing file) is one line on stderr and exit status 2, before anything
is written to DIR.
"""

import difflib
import importlib.util
import os
import re
import sys
from typing import Any, Sequence

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from deepalign.errors import UserError
from deepalign.train.run_stage import flat_keys as _flat_keys

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'configs/FILE.py[:PRESET]; override any field with --config.a.b=value',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'output directory (created; re-running resumes)')

_OVERRIDE = re.compile(r'^--?config\.([^=]+)(?:=(.*))?$')


def _fail(message: str) -> None:
  """One line on stderr, exit status 2: the contract for every user error."""
  print(f'error: {" ".join(message.split())}', file=sys.stderr, flush=True)
  sys.exit(2)


def _config_spec(argv: Sequence[str]) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _config_root(spec: str) -> str:
  """The directory holding `configs/`, so config files can `from configs import common`."""
  return os.path.dirname(os.path.dirname(os.path.abspath(spec.split(':', 1)[0])))


def _load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads FILE.py[:PRESET] the way config_flags does, but keeps the real exception."""
  path, _, preset = spec.partition(':')
  if not os.path.isfile(path):
    raise UserError(f'config file {path} not found (--config=configs/FILE.py[:PRESET])')
  module_spec = importlib.util.spec_from_file_location('_deepalign_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
  except Exception as e:
    raise UserError(f'config file {path} failed to import: {type(e).__name__}: {e}') from e
  if not hasattr(module, 'get_config'):
    raise UserError(f'config file {path} has no get_config(preset) function')
  try:
    return module.get_config(preset) if preset else module.get_config()
  except UserError:
    raise
  except Exception as e:
    raise UserError(f'config file {path} get_config({preset!r}) failed: {type(e).__name__}: {e}') from e


def _diagnose(argv: Sequence[str], error: BaseException) -> str:
  """Turns whatever flag parsing raised into one line that names the input and the fix."""
  spec = _config_spec(argv)
  if spec is None:
    return 'missing --config=configs/FILE.py[:PRESET]'
  try:
    config = _load_config(spec)
  except UserError as e:
    return str(e)
  keys = _flat_keys(config)
  for arg in argv[1:]:
    match = _OVERRIDE.match(arg)
    if not match:
      continue
    key, value = match.group(1), match.group(2)
    if key not in keys and not any(k.startswith(key + '.') for k in keys):
      near = difflib.get_close_matches(key, list(keys), n=5, cutoff=0.5)
      if not near:  # fall back to the keys under the closest existing parent
        parent = key.rpartition('.')[0]
        near = [k for k in keys if k.startswith(parent + '.')][:8] if parent else sorted(
            {k.split('.')[0] for k in keys})
      return (f"unknown config key '{key}' in {arg}; nearest valid keys: {', '.join(near)}")
    if key in keys and value is not None and f'--config.{key}=' in str(error).replace('-config.', '--config.', 1):
      default = keys[key]
      return (f"bad value {value!r} for config key '{key}' in {arg}: expected "
              f'{type(default).__name__} like {default!r}')
  first = str(error).strip().splitlines()
  return first[0] if first else type(error).__name__


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing, with every config error reported as one line and exit status 2."""
  spec = _config_spec(argv)
  if spec:
    root = _config_root(spec)
    if root not in sys.path:
      sys.path.insert(0, root)
  try:
    rest = flags.FLAGS(argv)
    # config_flags defers a file-loading failure to first attribute access.
    if not isinstance(_CONFIG.value, ml_collections.ConfigDict):
      raise flags.Error('--config did not load')
  except SystemExit:
    raise
  except Exception as e:  # flags.Error, AttributeError/KeyError (unknown key), UserError
    _fail(_diagnose(argv, e))
  if not _WORKDIR.value:
    _fail('missing --workdir=DIR (where config.json, metrics and checkpoints go)')
  return rest


def run(config: ml_collections.ConfigDict, workdir: str, console: Any = None):
  """Runs the stage the config names: a study or an evaluation, or trains one stage (or
  resumes it). console: a deepalign.console.Console for the progress display (None: silent)."""
  from deepalign import console as console_lib  # after flags: keeps --help and flag errors fast
  from deepalign.train import run_stage
  from deepalign.train.workdir_check import check_workdir
  check_workdir(config, workdir)  # a file, unwritable, another stage's run: before any write
  console = console or console_lib.Console.silent()
  run_stage.use_compilation_cache(config)
  if config.stage == 'toy_study':  # trains its runs through run_stage, then analyses them
    from deepalign.study import toy_study
    return toy_study.run(config, workdir, console=console)
  if config.stage == 'safety_eval':  # measures checkpoints; trains nothing
    from deepalign.study import safety_eval
    return safety_eval.run(config, workdir, console=console)
  progress = console.progress([(str(config.stage), 60.0)])
  with progress.stage(str(config.stage), log_path=os.path.join(workdir, 'log.txt')):
    return run_stage.train_stage(config, workdir)


class _QuietLibraries:
  """Drops INFO records from orbax/grain internals: they bury the progress line."""

  def filter(self, record) -> bool:
    return record.levelno >= 30 or not re.search(r'/(orbax|grain)/', record.pathname)


def main(argv: Sequence[str]) -> None:
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    _fail(f'unexpected arguments {" ".join(argv[1:])}; flags look like --config.a.b=value')
  from deepalign import console as console_lib
  console = console_lib.Console(full_log=console_lib.wants_full_log(flags.FLAGS))
  with console.session():  # progress and warnings on stderr; the full log in DIR/log.txt
    try:
      result = run(_CONFIG.value, _WORKDIR.value, console=console)
    except UserError as e:
      _fail(str(e))
    if result.preempted:
      logging.warning('stopped at step %d by a preemption signal; re-run the same command to resume',
                      int(result.state.step))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
