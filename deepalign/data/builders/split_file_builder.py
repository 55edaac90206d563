"""The base of builders whose release is one file (or file shard set) per split: train.jsonl, test.jsonl, ..."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator

import tensorflow_datasets as tfds

from deepalign.data.builders import bad_rows
from deepalign.data.builders.manual_builder import ManualBuilder, ManualConfig
from deepalign.data.builders.split_files import split_files


class SplitFileBuilder(ManualBuilder, skip_registration=True):
  """Splits from files named by split; each row becomes a record through `to_record`.

  Subclasses set PATTERNS (globs in manual_dir), EXPECTED (what the error says is missing),
  READ (path -> rows) and TO_RECORD (row -> record, raising row_fields.RowError on a bad row).
  """

  BUILDER_CONFIGS = [ManualConfig(name="default", description="train.jsonl / test.jsonl in manual_dir")]
  PATTERNS: tuple[str, ...] = ("*.jsonl", "*.jsonl.gz")
  EXPECTED = "train.jsonl / test.jsonl"
  READ: Callable[[str], Iterable[dict[str, Any]]]
  TO_RECORD: Callable[[dict[str, Any]], dict[str, str]]

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    files = split_files(manual_dir, self.PATTERNS, expected=self.EXPECTED)
    return {split: self._generate_examples(paths, manual_dir) for split, paths in files.items()}

  def _generate_examples(self, paths: list[str], manual_dir: str) -> Iterator[tuple[str, dict[str, str]]]:
    read, to_record = type(self).READ, type(self).TO_RECORD  # plain functions, not methods
    for path in paths:
      yield from bad_rows.examples(read(path), to_record, source=os.path.relpath(path, manual_dir),
                                   on_bad_row=self.on_bad_row, skipped_rows=self.skipped_rows,
                                   handled_rows=self.handled_rows)
