"""Fingerprints of the frozen models' sources, so a resume cannot swap them silently.

A checkpoint holds the trained state only: the frozen models (the RL / DPO reference, the reward
model, a classifier judge) are rebuilt from their sources on resume (train/loop.py). If a source
changed in between (a reward model retrained into the same workdir, another export), the resumed
run would go on against other models than it started with. At the first start DIR/frozen_models.json
records each source's path and a fingerprint of its files; a resume whose sources differ is
refused with a UserError naming them, unless `--config.train.allow_config_change=True`.

The fingerprint is cheap at any model size: each top-level file's size, the SHA-256 of every
JSON file (configs, the shard index), and of the first and last MiB of every weight file (the
safetensors header, which lists every tensor's name, dtype, shape and offsets, and the last
tensor's bytes). Modification times are left out: copying the same files elsewhere is no change.
"""

import hashlib
import json
import os
from typing import Any

import ml_collections
from absl import logging

from deepalign.errors import UserError
from deepalign.train import atomic_files, paths

FILE = 'frozen_models.json'
_EDGE = 1 << 20  # bytes hashed at each end of a weight file
_REFERENCE_STAGES = ('ppo', 'grpo', 'dpo')  # their reference is a frozen copy of the start model


def sources(config: ml_collections.ConfigDict) -> dict[str, str]:
  """{'reference' | 'reward' | 'judge': the HF directory it is built from} for this config."""
  from deepalign.train import policy_init  # pylint: disable=import-outside-toplevel
  out = {}
  if config.get('stage') in _REFERENCE_STAGES and 'model' in config:
    start = policy_init.checkpoint_dir(config)
    if start:
      out['reference'] = start
  rl = config.get('rl')
  if rl is not None:
    for name, field in (('reward', 'reward_from'), ('judge', 'judge')):
      value = rl.get(field, '')
      if value and value != 'env' and os.path.isdir(value):
        out[name] = policy_init.hf_dir_of(value) or value
  return out


def _digest(path: str, whole: bool) -> str:
  sha = hashlib.sha256()
  with open(path, 'rb') as f:
    if whole or os.path.getsize(path) <= 2 * _EDGE:
      sha.update(f.read())
    else:
      sha.update(f.read(_EDGE))
      f.seek(-_EDGE, os.SEEK_END)
      sha.update(f.read(_EDGE))
  return sha.hexdigest()


def fingerprint(directory: str) -> dict[str, Any]:
  """{'path': absolute path, 'files': {name: [size, sha256]}} of a model directory's files."""
  files = {}
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      files[name] = [os.path.getsize(path), _digest(path, whole=name.endswith('.json'))]
  return {'path': os.path.abspath(directory), 'files': files}


def fingerprints(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return {name: fingerprint(directory) for name, directory in sources(config).items()}


def _has_checkpoint(workdir: paths.PathLike) -> bool:
  directory = paths.to_path(workdir) / 'checkpoints'
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _changes(old: dict, new: dict) -> list[str]:
  out = []
  for name in sorted(set(old) | set(new)):
    if name not in new or name not in old:
      out.append(f'{name}: {"removed" if name not in new else "added"}')
      continue
    a, b = old[name], new[name]
    files = sorted(f for f in set(a['files']) | set(b['files'])
                   if a['files'].get(f) != b['files'].get(f))
    if a['path'] != b['path'] or files:
      where = a['path'] if a['path'] == b['path'] else f'{a["path"]} -> {b["path"]}'
      out.append(f'{name} ({where}' + (f'; changed files: {", ".join(files[:4])}' if files else '')
                 + ')')
  return out


def check(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> None:
  """UserError if `workdir` holds a checkpoint whose run started from other frozen models than
  this config's sources are now; writes nothing. Runs from before fingerprints are not checked."""
  record = paths.join(workdir, FILE)
  if not _has_checkpoint(workdir) or not paths.to_path(record).exists():
    return
  changes = _changes(json.loads(atomic_files.read_text(record)), fingerprints(config))
  if not changes:
    return
  if bool(config.get('train', {}).get('allow_config_change', False)):
    logging.warning('resuming %s with frozen models that changed since it started (allowed by '
                    'config.train.allow_config_change): %s', workdir, '; '.join(changes))
    return
  raise UserError(f'{workdir} was started with other frozen models than its config names now: '
                  f'{"; ".join(changes)}; a resume would continue against other models. Restore '
                  'them, use a fresh --workdir, or resume anyway with '
                  '--config.train.allow_config_change=True')


def record(config: ml_collections.ConfigDict, workdir: paths.PathLike) -> None:
  """Writes DIR/frozen_models.json (what `check` compares against) when the run starts."""
  found = fingerprints(config)
  path = paths.join(workdir, FILE)
  if found or paths.to_path(path).exists():
    atomic_files.write_json_atomic(path, found)
