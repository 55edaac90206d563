"""Scalar metrics to DIR/metrics.jsonl (one JSON object per logged step) and TensorBoard."""

import importlib.util
import io
import json
import math
import os
from typing import Mapping

import numpy as np
from absl import logging

from deepalign.train import atomic_files, paths


def _to_python(value) -> float | int | None:
  """JSON has no NaN/inf: they become null so the file stays valid JSON lines."""
  value = np.asarray(value).item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _append_line(path: str, line: str) -> None:
  """One write(2) of the whole line to a file opened O_APPEND: a kill leaves the line whole or
  absent (a write of a few hundred bytes to a local file is not split), never half of it."""
  data = line.encode('utf-8')
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
  try:
    written = os.write(fd, data)
    while written < len(data):  # only on a full disk or a signal; finish the line
      written += os.write(fd, data[written:])
  finally:
    os.close(fd)


class MetricsWriter:
  """Appends `{"step": s, name: value, ...}` lines; mirrors every scalar to TensorBoard.

  On resume from step `resume_step`, lines after it (written by the interrupted run
  past its last checkpoint) are dropped, so the file matches an uninterrupted run. Each line is
  appended with one write(2), so a kill never leaves half a line (older files may end in one
  from before: it is dropped on resume).
  Only process 0 writes.

  A workdir on gs:// (no appends to an object) keeps the file's lines in memory and rewrites
  the whole object at each write: the object is replaced only when complete, so the same
  whole-or-absent holds.
  """

  def __init__(self, workdir: paths.PathLike, resume_step: int = 0, enabled: bool = True):
    self.path = paths.join(workdir, 'metrics.jsonl')
    self.enabled = enabled
    self._local = paths.is_local(workdir)
    self._lines: list[str] = []  # the file's content, for a remote workdir only
    self._tb = None
    if not enabled:
      return
    self._truncate_after(resume_step)
    if not self._local and importlib.util.find_spec('google.cloud.storage') is None:
      logging.warning('no TensorBoard events in %s: tensorboardX writes gs:// only with '
                      'google-cloud-storage installed; writing metrics.jsonl only', workdir)
      return
    try:
      from tensorboardX import SummaryWriter  # optional: jsonl alone is the contract
      self._tb = SummaryWriter(paths.join(workdir, 'tensorboard'),
                               purge_step=resume_step + 1 if resume_step else None)
    except ImportError:
      logging.warning('tensorboardX is not installed; writing metrics.jsonl only')
    except Exception as e:  # pylint: disable=broad-except
      if self._local:
        raise
      # tensorboardX writes gs:// only with google-cloud-storage installed
      logging.warning('no TensorBoard events in %s (%s: %s); writing metrics.jsonl only', workdir,
                      type(e).__name__, e)

  def _truncate_after(self, step: int) -> None:
    path = paths.to_path(self.path)
    if not path.exists():
      return
    kept = []
    for line in io.StringIO(path.read_text()):  # lines as `for line in open(...)` splits them
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill mid-write
      if row.get('step', 0) <= step:
        kept.append(json.dumps(row) + '\n')
    atomic_files.write_text_atomic(self.path, ''.join(kept))
    if not self._local:
      self._lines = kept

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: _to_python(v) for k, v in sorted(metrics.items())}}
    line = json.dumps(row) + '\n'
    if self._local:
      _append_line(self.path, line)
    else:
      self._lines.append(line)
      atomic_files.write_text_atomic(self.path, ''.join(self._lines))
    if self._tb is not None:
      for name, value in row.items():
        if name != 'step' and value is not None:
          self._tb.add_scalar(name, value, step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: paths.PathLike) -> list[dict]:
  """All rows of DIR/metrics.jsonl (local or gs://), in order."""
  text = atomic_files.read_text(paths.join(workdir, 'metrics.jsonl'))
  return [json.loads(line) for line in text.splitlines() if line.strip()]
