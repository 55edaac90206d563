"""Find a release's files in a manual dir and group them by split (train, test, ...).

A file's split is its name up to the first dot, with a Hugging Face shard suffix
(`train-00000-of-00004.parquet`) removed, or for a file named by a number alone (the
Hub's parquet conversion, `default/train/0000.parquet`) its directory's name; files may sit in sub-directories when
`recursive` (PKU-SafeRLHF keeps one directory per generating model).
"""

from __future__ import annotations

import fnmatch
import os
import re

from deepalign.errors import UserError

_SHARD = re.compile(r"^(?P<split>.+?)-\d+-of-\d+$")
_SPLIT_NAME = re.compile(r"^[A-Za-z_]\w*$")


def split_of(filename: str) -> str:
  """'train.jsonl.gz' -> 'train'; 'test-00000-of-00002.parquet' -> 'test'."""
  stem = filename.split(".", 1)[0]
  match = _SHARD.match(stem)
  return match.group("split") if match else stem


def split_files(manual_dir: str, patterns: tuple[str, ...], *, recursive: bool = False,
                expected: str) -> dict[str, list[str]]:
  """{split: sorted file paths} for the files in `manual_dir` matching any of `patterns`.

  Args:
    manual_dir: where the user put the release.
    patterns: glob patterns on file names, e.g. ('*.jsonl', '*.jsonl.gz').
    recursive: also look in sub-directories.
    expected: how to describe the wanted files in the error if none is found.
  """
  if not os.path.isdir(manual_dir):
    raise UserError(f"manual_dir {manual_dir} is not a directory; create it and put {expected} there")
  found: dict[str, list[str]] = {}
  for root, dirs, files in os.walk(manual_dir):
    dirs.sort()
    if not recursive:
      dirs.clear()
    for name in sorted(files):
      if any(fnmatch.fnmatch(name, p) for p in patterns):
        split = split_of(name)
        if split.isdigit():  # Hugging Face's parquet conversion: <config>/<split>/0000.parquet
          split = os.path.basename(os.path.normpath(root))
        if not _SPLIT_NAME.match(split):
          raise UserError(f"{os.path.join(root, name)}: cannot name a split {split!r}; "
                          f"rename the file to e.g. train{name[len(split):]}")
        found.setdefault(split, []).append(os.path.join(root, name))
  if not found:
    raise UserError(f"manual_dir {manual_dir} has no {expected}; put the released files there "
                    "(see the builder's MANUAL_DOWNLOAD_INSTRUCTIONS)")
  return {split: sorted(paths) for split, paths in sorted(found.items())}
