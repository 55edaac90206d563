"""Where log records go while the console shows progress.

At the default verbosity the absl handler writes nothing to stderr: the progress display and
plain `warning: ...` lines are the console (progress.py). Every record from INFO up still goes
to the log file of the stage that is running (`log_file`), in absl's format, so nothing is
lost. Naming any of absl's logging flags on the command line (`--verbosity=0`, `-v 1`,
`--alsologtostderr`, ...) asks for the full log on stderr, as before.
"""

import contextlib
import logging
import os
import re
from typing import Callable, Iterator

from absl import logging as absl_logging

FULL_LOG_FLAGS = ('verbosity', 'logtostderr', 'alsologtostderr', 'stderrthreshold')


def wants_full_log(flag_values) -> bool:
  """True when the command line set one of absl's logging flags: the person asked for the log."""
  return any(name in flag_values and flag_values[name].present for name in FULL_LOG_FLAGS)


def silence_absl_stderr() -> Callable[[], None]:
  """The absl handler (stderr) drops every record; files and the console's handler still get
  them. Returns the function that restores it."""
  handler = absl_logging.get_absl_handler()
  level = handler.level
  handler.setLevel(logging.CRITICAL + 1)
  return lambda: handler.setLevel(level)


class DropBackendProbes(logging.Filter):
  """jax logs "Unable to initialize backend 'tpu': ... libtpu.so" at INFO each time it probes for
  an accelerator the machine does not have: noise on every CPU run, not a problem."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.levelno < logging.WARNING and record.name.startswith('jax')
                and str(record.msg).startswith('Unable to initialize backend'))


class DropVariantProbes(logging.Filter):
  """TFDS warns "Variant folder DIR has no dataset_info.json" when it looks for a prepared copy
  of the dataset it is about to prepare (the folder it is going to write): expected on every
  first preparation, so it goes to the log file only, not to the console's warning lines."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (str(record.msg).startswith('Variant folder %s has no %s')
                and 'tensorflow_datasets' in record.pathname)


class DropLibraryChatter(logging.Filter):
  """INFO records of orbax and grain internals (handler registrations, every save's bytes):
  they say nothing about the run and would be most of its log."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not re.search(r'/(orbax|grain)/', record.pathname)


def is_local(path: str) -> bool:
  """A path this process can append a log file to (not gs:// or another remote filesystem)."""
  return '://' not in path


class DirectoryLog(logging.Handler):
  """Appends records to `path` once its directory exists, holding them until then: a command
  must not create its workdir before the run starts (a bad input leaves none behind), and what
  was logged before it is kept. Records held when it closes with no directory are dropped."""

  def __init__(self, path: str, level: int = logging.INFO):
    super().__init__(level)
    self.path = path
    self._held: list[str] = []
    self._file = None
    self.setFormatter(absl_logging.PythonFormatter())
    self.addFilter(DropBackendProbes())
    self.addFilter(DropLibraryChatter())

  def emit(self, record: logging.LogRecord) -> None:
    try:
      text = self.format(record)
      if self._file is None:
        if not os.path.isdir(os.path.dirname(os.path.abspath(self.path))):
          self._held.append(text)
          return
        self._file = open(self.path, 'a', encoding='utf-8')
        for held in self._held:
          self._file.write(held + '\n')
        self._held = []
      self._file.write(text + '\n')
      self._file.flush()
    except Exception:  # logging must never stop the run
      self.handleError(record)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    super().close()


@contextlib.contextmanager
def log_file(path: str) -> Iterator[logging.Handler | None]:
  """While the block runs, every record from INFO up goes to `path` (absl's format), from the
  moment its directory exists (DirectoryLog); remote paths (gs://) get none."""
  if not is_local(path):
    yield None
    return
  handler = DirectoryLog(path)
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield handler
  finally:
    root.removeHandler(handler)
    handler.close()
