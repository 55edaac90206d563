"""Config overrides of a launch: checked against the base config up front, and written as flags.

An override is `{'recovery.coef': 2.0}` (a sweep file's Python values) or `--config.recovery.coef=2`
(the command line's strings). `apply` checks every key and value against the config the run
would load (`deepalign.main` loads it the same way), so a typo fails the whole launch, with the
nearest valid keys named as `deepalign.main` names them, before anything runs or is written.
"""

from __future__ import annotations

import ast
import copy
import os
import re
import sys
from typing import Any, Mapping, Sequence

import ml_collections

from deepalign.errors import UserError

_FLAG = re.compile(r'^--?config\.([^=]+)=(.*)$')


def _main():
  from deepalign import main  # pylint: disable=g-import-not-at-top  (defines absl flags; never parsed here)
  return main


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config `--config=FILE.py[:PRESET]` names, loaded as `deepalign.main` loads it."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(spec.split(':', 1)[0])))
  if root not in sys.path:  # config files import `configs.common`
    sys.path.insert(0, root)
  return _main()._load_config(spec)  # pylint: disable=protected-access


def parse_flags(args: Sequence[str]) -> dict[str, str]:
  """{'a.b': 'v'} from ['--config.a.b=v', ...]; anything else is a UserError."""
  out = {}
  for arg in args:
    match = _FLAG.match(arg)
    if not match:
      raise UserError(f'unexpected argument {arg!r}; overrides look like --config.a.b=value')
    out[match.group(1)] = match.group(2)
  return out


def _typed(text: str, default: Any) -> Any:
  """A command-line string as the field's type (as ml_collections' config_flags parses it)."""
  if isinstance(default, str) or default is None:
    return text
  if isinstance(default, bool):
    if text.lower() in ('true', '1'):
      return True
    if text.lower() in ('false', '0'):
      return False
    return text  # left for the type check to refuse
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def apply(spec: str, config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
          where: str = '') -> ml_collections.ConfigDict:
  """A copy of `config` with `overrides` set; UserError for an unknown key or a wrong type.

  Values may be Python values (a sweep file) or strings (command-line flags: parsed as the
  field's type). `where` names the run in the error.
  """
  main = _main()
  keys = main._flat_keys(config)  # pylint: disable=protected-access
  out = copy.deepcopy(config)
  for key, value in overrides.items():
    arg = f'--config.{key}={value}'
    if key not in keys:
      # deepalign.main's own message, nearest keys and all (a key naming a section is refused too:
      # a run sets leaves).
      message = main._diagnose(['launch', f'--config={spec}', arg], UserError(arg))  # pylint: disable=protected-access
      if not message.startswith('unknown config key'):
        message = f"'{key}' in {arg} names a section of the config; set its fields, e.g. {key}.FIELD"
      raise UserError(f'{where}: {message}' if where else message)
    default = keys[key]
    if isinstance(value, str):
      value = _typed(value, default)
    parent, _, leaf = key.rpartition('.')
    node = out
    for part in parent.split('.') if parent else ():
      node = node[part]
    try:
      node[leaf] = tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    except (TypeError, ValueError) as e:
      raise UserError(f"{where + ': ' if where else ''}bad value {value!r} for config key '{key}': "
                      f'expected {type(default).__name__} like {default!r}') from e
  return out


def flag_value(value: Any) -> str:
  """How `deepalign.main` reads `value` back from `--config.key=...`."""
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  return str(value) if isinstance(value, (str, bool)) else repr(value)


def flags(overrides: Mapping[str, Any]) -> list[str]:
  """['--config.a.b=v', ...] in the order given."""
  return [f'--config.{k}={flag_value(v)}' for k, v in overrides.items()]
