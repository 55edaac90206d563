"""Checks a --workdir before anything is written to it (every stage, the study, the evaluation).

Refused, each with one UserError: a path that is a file (or lies under one), a directory this
process cannot write, a `config.json` there that is not JSON, and a workdir holding a run of
another stage or another model architecture (`stage`, `model.*` differ from its config.json),
unless `--config.train.allow_config_change=True`, which resumes it with a warning listing the
changes. Other changed fields (num_steps, log_every, ...) are the caller's to report.
"""

import json
import os
import tempfile
from typing import Any

import ml_collections
from absl import logging

from deepalign.errors import UserError
from deepalign.train import paths

# Fields that say which run a workdir holds: resuming it with others changed is refused.
IDENTITY_PREFIXES = ('stage', 'model.')
_ALLOW = '--config.train.allow_config_change=True'


def _flat(config: Any, prefix: str = '') -> dict[str, Any]:
  out = {}
  for key, value in config.items():
    if isinstance(value, (ml_collections.ConfigDict, dict)) and value:
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


# model.* fields that change how a step runs, not which parameters a run holds.
NOT_IDENTITY = ('model.remat', 'model.logits_chunk_size', 'model.abstract',
                'model.trim_last_layer')


def identity_changes(old: dict, new: dict) -> list[str]:
  """'key: old -> new' for the identity fields (stage, model.*) that differ.

  A field the old record lacks (added to deepalign after that run started) counts only when the
  new value is not the off / empty default (False, 0, '', 'none'): a run recorded before
  `model.scan_layers` existed was unscanned, so False is no change.
  """
  a, b = _flat(old), _flat(new)
  keys = ['stage'] + [k for k in sorted(set(a) | set(b))
                      if k.startswith(IDENTITY_PREFIXES[1:]) and k not in NOT_IDENTITY]
  def changed(k: str) -> bool:
    if k not in a and b.get(k) in (False, 0, '', 'none', None):
      return False
    return a.get(k) != b.get(k)
  return [f'{k}: {a.get(k)!r} -> {b.get(k)!r}' for k in keys if changed(k)]


def _writable(directory: str) -> str | None:
  """None if a file can be created in `directory`, else why not (a real probe: root ignores
  permission bits, a read-only mount does not)."""
  try:
    fd, probe = tempfile.mkstemp(prefix='.deepalign-write-probe-', dir=directory)
  except OSError as e:
    return e.strerror or type(e).__name__
  os.close(fd)
  os.unlink(probe)
  return None


def _check_remote(workdir: str) -> str | None:
  """The same checks for a gs:// workdir, through etils.epath: an object of that name (a file)
  is refused, and a probe object is written and deleted (the bucket's permissions decide; on
  a bucket this leaves nothing behind, as a directory there is only a name prefix)."""
  path = paths.to_path(workdir)
  try:
    if path.exists() and not path.is_dir():
      raise UserError(f'--workdir={workdir} is a file, not a directory; pass a directory (it is '
                      'created) or remove the file')
    probe = path / f'.deepalign-write-probe-{os.getpid()}'
    probe.write_bytes(b'')
    probe.unlink()
    record = path / 'config.json'
    found = record.exists()
  except UserError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(f'--workdir={workdir} is not writable ({type(e).__name__}: '
                    f'{str(e).splitlines()[0] if str(e) else ""}); check the bucket and its '
                    'permissions (gcloud storage ls), and that gcsfs is installed '
                    '(pip install -e ".[gcs]")') from None
  return os.fspath(record) if found else None


def check_workdir(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> None:
  """UserError if `workdir` cannot hold this run (see the module doc); writes nothing."""
  if not workdir:
    raise UserError('missing --workdir=DIR (where config.json, metrics and checkpoints go)')
  if paths.is_local(workdir):
    record = _check_local(os.fspath(workdir))
  else:
    record = _check_remote(os.fspath(workdir))
  if record is not None:
    _check_record(config, workdir, record)


def _check_local(workdir: str) -> str | None:
  """The local checks; the path of the config.json to compare, or None when there is none."""
  path = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(path) and not os.path.isdir(path):
    raise UserError(f'--workdir={workdir} is a file, not a directory; pass a directory (it is '
                    'created) or remove the file')
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise UserError(f'--workdir={workdir} cannot be created: {existing} is a file')
  why = _writable(existing)
  if why is not None:
    raise UserError(f'--workdir={workdir} is not writable ({existing}: {why}); pass a directory '
                    'you can write to')
  record = os.path.join(path, 'config.json')
  return record if os.path.isfile(record) else None


def _check_record(config: ml_collections.ConfigDict, workdir: paths.PathLike, record: str) -> None:
  """The identity check against the config.json a workdir holds (see the module doc)."""
  try:
    old = json.loads(paths.to_path(record).read_text())
    if not isinstance(old, dict):
      raise ValueError('not a JSON object')
  except (OSError, ValueError) as e:
    raise UserError(f'{record} is not a readable JSON config ({type(e).__name__}: {e}); this '
                    'workdir holds a damaged run: use a fresh --workdir') from None
  new = json.loads(config.to_json_best_effort())
  changes = identity_changes(old, new)
  if not changes:
    return
  allowed = bool(config.get('train', {}).get('allow_config_change', False))
  what = ('a run of another stage' if old.get('stage') != new.get('stage')
          else 'a run of another model architecture')
  if not allowed:
    raise UserError(f'--workdir={workdir} holds {what} ({"; ".join(changes[:8])}'
                    f'{" ..." if len(changes) > 8 else ""}); use a fresh --workdir, or resume it '
                    f'anyway with {_ALLOW}')
  logging.warning('resuming %s, which holds %s (allowed by config.train.allow_config_change): %s',
                  workdir, what, '; '.join(changes))
