"""What a builder does with a malformed source row: stop with one clear error, or skip and count.

`on_bad_row='error'` (the default) stops preparation at the first bad row with a
UserError naming the file, the line and the field. `on_bad_row='skip'` drops such
rows and logs, once per file, how many were dropped and where the first one was, so
a published number can say exactly which rows it left out.

A known quirk of a public release is not a bad row: the builder's documented policy
handles it (`to_record` returns `Handled(policy, record or None)`: kept as `record`,
or dropped), whatever `on_bad_row` says, and every policy's count is logged once per
file and saved with the dataset (`builder.handled_rows`).
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable, Iterable, Iterator

from absl import logging

from deepalign.data.manual_readers import RawRow, RowError
from deepalign.errors import UserError

ON_BAD_ROW = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class Handled:
  """A row a documented policy handled: `policies` (names, each counted), kept as `record` or dropped (None)."""
  policies: tuple[str, ...]
  record: dict[str, Any] | None = None


def check_on_bad_row(value: str) -> str:
  if value not in ON_BAD_ROW:
    raise UserError(f"on_bad_row={value!r} is not supported; use one of {list(ON_BAD_ROW)}")
  return value


def examples(
    rows: Iterable[RawRow],
    to_record: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    source: str,
    on_bad_row: str,
    skipped_rows: dict[str, int] | None = None,
    handled_rows: dict[str, dict[str, int]] | None = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
  """TFDS `(key, record)` pairs for the rows of ONE file.

  Args:
    rows: the file's rows, from a `manual_readers` reader.
    to_record: row fields -> record; raises `RowError` for a malformed row.
    source: the file's path relative to the manual dir. Keys are `source:line`, so
      the prepared order (TFDS orders by key hash) does not depend on where the
      manual dir lives.
    on_bad_row: 'error' or 'skip'.
    skipped_rows: where to record {source: rows dropped} (the builder's saved metadata).
    handled_rows: where to record {source: {policy: rows}} for rows `to_record` returned
      as `Handled` (the builder's saved metadata).
  """
  check_on_bad_row(on_bad_row)
  handled: collections.Counter[str] = collections.Counter()
  skipped = 0
  first = ""
  path = source
  for row in rows:
    path = row.path
    error = row.error
    if error is None:
      try:
        record = to_record(row.fields)
      except RowError as e:
        error = e
    if error is not None:
      if on_bad_row == "error":
        raise UserError(f"{row.where}: {error}; fix or remove the row, or prepare with on_bad_row='skip'")
      skipped += 1
      first = first or f"{row.unit} {row.line}, {error}"
      continue
    if isinstance(record, Handled):
      handled.update(record.policies)
      if record.record is None:
        continue
      record = record.record
    yield f"{source}:{row.line}", record
  if handled:
    if handled_rows is not None:
      handled_rows[source] = dict(sorted(handled.items()))
    logging.info("%s: rows handled by the builder's documented policies: %s", path,
                 ", ".join(f"{n} {p}" for p, n in sorted(handled.items())))
  if skipped:
    if skipped_rows is not None:
      skipped_rows[source] = skipped
    logging.warning("%s: skipped %d malformed row(s) (on_bad_row='skip'); first at %s", path, skipped, first)
