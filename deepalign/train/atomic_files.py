"""Writes that never leave a half-written file behind (a kill mid-write keeps the old one).

Local: a temporary file in the same directory, fsynced, renamed over the target (rename is
atomic on POSIX). On an object store (gs://) an object is replaced only when its upload is
complete, so a plain write through etils.epath is already all-or-nothing (a rename there is a
copy and a delete: no atomicity to gain, twice the traffic).
"""

import json
import os
import tempfile
from typing import Any

from deepalign.train import paths


def write_bytes_atomic(path: paths.PathLike, data: bytes) -> None:
  """`path` holds `data` or its old content, never a part of `data`, whatever kills the write."""
  if not paths.is_local(path):
    target = paths.to_path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', dir=directory)
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_text_atomic(path: paths.PathLike, text: str) -> None:
  write_bytes_atomic(path, text.encode('utf-8'))


def write_json_atomic(path: paths.PathLike, obj: Any) -> None:
  write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + '\n')


def read_text(path: paths.PathLike) -> str:
  """The text of a local or gs:// file."""
  return paths.to_path(path).read_text()
