"""Command line: prepare one dataset into a TFDS data dir (array_record), printing its splits.

  python -m deepalign.data.builders.prepare_main --dataset=hh_rlhf --config=harmless_base \\
      --manual_dir=~/hh-rlhf --data_dir=~/tensorflow_datasets [--on_bad_row=skip]
  python -m deepalign.data.builders.prepare_main --dataset=harm_language --config=toy-sft --data_dir=DIR

A bad input (unknown dataset or config, malformed row, missing files) prints one line
and exits with status 2, leaving the data dir as it was.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags

from deepalign.data.builders import BUILDERS, prepare
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


def run(dataset: str, config: str | None, manual_dir: str | None, data_dir: str, on_bad_row: str) -> str:
  """Prepare and return a summary line per split."""
  cls = BUILDERS[dataset]
  if config is not None and config not in cls.builder_configs:
    raise UserError(f"--config={config} is not a config of {dataset}; use one of {sorted(cls.builder_configs)}")
  builder = prepare(cls, data_dir=os.path.expanduser(data_dir), config=config, on_bad_row=on_bad_row,
                    manual_dir=os.path.expanduser(manual_dir) if manual_dir else None)
  lines = [f"{builder.name}/{builder.builder_config.name} {builder.version} at {builder.data_path}"]
  lines += [f"  {split}: {info.num_examples} records" for split, info in sorted(builder.info.splits.items())]
  lines += [f"  skipped {n} malformed row(s) in {src}" for src, n in sorted(builder.skipped_rows.items())]
  lines += [f"  {n} row(s) {policy} in {src}" for src, counts in sorted(builder.handled_rows.items())
            for policy, n in counts.items()]
  return "\n".join(lines)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag reported like every other user error: one line, status 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str]) -> None:
  del argv
  try:
    f = flags.FLAGS
    print(run(f.dataset, f.config, f.manual_dir, f.data_dir, f.on_bad_row))
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
