"""Command line: prepare one dataset into a TFDS data dir (array_record), printing its splits.

  python -m deepalign.data.builders.prepare_main --dataset=hh_rlhf --config=harmless_base \\
      --manual_dir=~/hh-rlhf --data_dir=~/tensorflow_datasets [--on_bad_row=skip]
  python -m deepalign.data.builders.prepare_main --dataset=harm_language --config=toy-sft --data_dir=DIR

A bad input (unknown dataset or config, malformed row, missing files) prints one line
and exits with status 2, leaving the data dir as it was.

On the console (deepalign/console): a progress display while the dataset is prepared, a line
per split as TFDS finishes writing it, then the summary on stdout. TFDS's progress bars and
its own stdout lines stay off the console (they go to the log, which `--verbosity=0` or any
absl logging flag puts back on stderr).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
from typing import Any

from absl import app, flags

from deepalign.data.builders import BUILDERS, prepare
from deepalign.data.builders.manual_builder import configured
from deepalign.errors import UserError


def define_flags() -> None:
  """The command's flags, defined when it runs as a program, so that importing `run` (tests,
  scripts) claims no absl flag name: `--config` is also `deepalign.main`'s, and absl refuses a
  name defined twice in one process."""
  flags.DEFINE_enum("dataset", None, sorted(BUILDERS), "Which builder to run.", required=True)
  flags.DEFINE_string("config", None, "Builder config name (default: the builder's first config).")
  flags.DEFINE_string("manual_dir", None, "Directory holding the released files (not for harm_language).")
  flags.DEFINE_string("data_dir", os.path.expanduser("~/tensorflow_datasets"), "TFDS data dir to write to.")
  flags.DEFINE_enum("on_bad_row", "error", ["error", "skip"], "Stop at a malformed row, or skip and count.")


class _SplitsWritten(logging.Handler):
  """TFDS's 'Done writing FILE. Number of examples: N' record (tensorflow_datasets/core/writer.py)
  as one console line per split: the only progress TFDS reports of a preparation."""

  def __init__(self, console: Any, progress: Any):
    super().__init__(logging.INFO)
    self._console, self._progress = console, progress

  def emit(self, record: logging.LogRecord) -> None:
    if not (str(record.msg).startswith("Done writing %s. Number of examples: %s")
            and isinstance(record.args, tuple) and len(record.args) >= 2):
      return
    from deepalign.console import format_duration
    # FILE is DIR/incomplete.*/<name>-<split>.<format>-<shard pattern>.
    split = os.path.basename(str(record.args[0])).split(".")[0].rpartition("-")[2]
    self._console.note(f"  {split}: {record.args[1]} records written "
                       f"({format_duration(self._progress.elapsed())} elapsed)")


def run(dataset: str, config: str | None, manual_dir: str | None, data_dir: str, on_bad_row: str,
        console: Any = None) -> str:
  """Prepare and return a summary line per split. console: a deepalign.console.Console that
  shows the preparation's progress (None: nothing shown)."""
  cls = BUILDERS[dataset]
  if config is not None and config not in cls.builder_configs:
    raise UserError(f"--config={config} is not a config of {dataset}; use one of {sorted(cls.builder_configs)}")
  name = f"prepare {dataset}" + (f"/{config}" if config else "")
  if console is not None and configured(cls, data_dir=os.path.expanduser(data_dir), config=config,
                                        on_bad_row=on_bad_row).is_prepared():
    console.note(f"{name}: already prepared")  # prepare() below only opens it
    console = None
  with _progress(console, name):
    builder = prepare(cls, data_dir=os.path.expanduser(data_dir), config=config, on_bad_row=on_bad_row,
                      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  lines = [f"{builder.name}/{builder.builder_config.name} {builder.version} at {builder.data_path}"]
  lines += [f"  {split}: {info.num_examples} records" for split, info in sorted(builder.info.splits.items())]
  lines += [f"  skipped {n} malformed row(s) in {src}" for src, n in sorted(builder.skipped_rows.items())]
  lines += [f"  {n} row(s) {policy} in {src}" for src, counts in sorted(builder.handled_rows.items())
            for policy, n in counts.items()]
  return "\n".join(lines)


@contextlib.contextmanager
def _progress(console: Any, name: str):
  """The preparation as one stage of `console`'s progress display, with a line per written split;
  TFDS's progress bars off and its stdout prints (termcolor) into the log, not the summary."""
  if console is None or not console.enabled:
    yield
    return
  import tensorflow_datasets as tfds
  progress = console.progress([(name, 60.0)])
  watcher = _SplitsWritten(console, progress)
  root = logging.getLogger()
  captured = io.StringIO()
  if not console.full_log:
    tfds.disable_progress_bar()
  console.note(f"{name}: started")
  root.addHandler(watcher)
  try:
    with progress.stage(name), contextlib.redirect_stdout(captured):
      yield
  finally:
    root.removeHandler(watcher)
    for line in captured.getvalue().splitlines():
      if line.strip():
        logging.info("tfds: %s", line.strip())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag reported like every other user error: one line, status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
  del argv
  from deepalign import console as console_lib
  console = console_lib.Console(full_log=console_lib.wants_full_log(flags.FLAGS))
  with console.session():  # progress and warnings on stderr, absl's lines only when asked
    try:
      f = flags.FLAGS
      summary = run(f.dataset, f.config, f.manual_dir, f.data_dir, f.on_bad_row, console=console)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)
    console.print(summary)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
