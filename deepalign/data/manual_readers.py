"""Read rows, with their line numbers, from the files public alignment datasets are released as.

Every reader yields `RawRow`s: where the row is (file, line) and either its fields or
the reason it could not be read. A reader never stops at a bad row, so a builder can
either fail on it (naming file, line and field) or skip it and keep counting.
Supported: JSON lines (`.jsonl`, `.jsonl.gz`), CSV (header or headerless, quoted
commas, CRLF), plain text (one item per line) and Parquet (needs `pyarrow`).
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import json
import os
from typing import Any, Iterator, Sequence

from deepalign.errors import UserError

# The whole row is at fault (bad JSON, wrong column count), not one named field.
WHOLE_ROW = "(row)"


@dataclasses.dataclass  # not frozen: Python sets attributes (__traceback__, notes) on exceptions
class RowError(Exception):
  """What is wrong with one row: the field (dotted path, or WHOLE_ROW) and the problem."""
  field: str
  problem: str

  def __str__(self) -> str:
    return f"field '{self.field}': {self.problem}"


@dataclasses.dataclass(frozen=True)
class RawRow:
  """One row of a source file. `line` is 1-based (the row's first physical line)."""
  path: str
  line: int
  fields: dict[str, Any] | None
  error: RowError | None = None
  unit: str = "line"  # Parquet has rows, not lines

  @property
  def where(self) -> str:
    return f"{self.path}, {self.unit} {self.line}"


def _invalid_text_path(value: Any, path: str) -> str | None:
  """The dotted path of the first string holding undecodable bytes or a lone surrogate.

  Bytes that are not UTF-8 arrive as surrogate escapes (U+DC80..U+DCFF) and JSON
  `\\ud83d` escapes without their pair arrive as lone surrogates; neither is text.
  """
  if isinstance(value, str):
    try:
      value.encode("utf-8")
    except UnicodeEncodeError:
      return path
    return None
  if isinstance(value, dict):
    for key, item in value.items():
      found = _invalid_text_path(item, f"{path}.{key}" if path else str(key))
      if found:
        return found
  if isinstance(value, list):
    for i, item in enumerate(value):
      found = _invalid_text_path(item, f"{path}[{i}]")
      if found:
        return found
  return None


def _open_binary(path: str):
  return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
  """(1-based line number, line without its line end), for plain or gzipped files."""
  try:
    with _open_binary(path) as f:
      for number, line in enumerate(f, start=1):
        yield number, line.rstrip(b"\r\n")
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise UserError(f"{path}: cannot be read ({e}); re-download it (a .gz must be a complete gzip file)") from e


def read_jsonl(path: str) -> Iterator[RawRow]:
  """JSON lines, one object per line; blank lines are ignored."""
  for number, raw in _lines(path):
    if not raw.strip():
      continue
    text = raw.decode("utf-8", errors="surrogateescape")
    if number == 1:
      text = text.removeprefix("\ufeff")
    try:
      fields = json.loads(text)
    except json.JSONDecodeError as e:
      yield RawRow(path, number, None, RowError(WHOLE_ROW, f"not valid JSON ({e.msg} at column {e.colno})"))
      continue
    if not isinstance(fields, dict):
      yield RawRow(path, number, None, RowError(WHOLE_ROW, f"is a JSON {type(fields).__name__}, expected an object"))
      continue
    bad = _invalid_text_path(fields, "")
    if bad:
      yield RawRow(path, number, None, RowError(bad, "is not valid UTF-8 text"))
      continue
    yield RawRow(path, number, fields)


def _decoded_text(path: str) -> str:
  """The whole file as text, invalid UTF-8 kept as surrogate escapes to be reported per row."""
  with _open_binary(path) as f:
    data = f.read()
  return data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")


def read_csv(path: str, columns: Sequence[str] | None = None) -> Iterator[RawRow]:
  """CSV rows as dicts; `columns=None` reads names from the header, else the file is headerless.

  Quoted fields may hold commas and line breaks; CRLF and LF both work. Blank lines
  are ignored. A header lacking a needed column is an error for the whole file.
  """
  reader = csv.reader(io.StringIO(_decoded_text(path), newline=""), strict=True)
  names = list(columns) if columns is not None else None
  consumed = 0  # physical lines read so far, to know where the next row starts
  while True:
    start = consumed + 1
    try:
      values = next(reader)
    except StopIteration:
      return
    except csv.Error as e:
      yield RawRow(path, start, None, RowError(WHOLE_ROW, f"is not valid CSV ({e})"))
      return  # the csv module cannot resynchronise after a broken quote
    finally:
      consumed = reader.line_num
    if not values or (len(values) == 1 and not values[0].strip()):
      continue
    if names is None:
      names = [v.strip() for v in values]
      continue
    if len(values) != len(names):
      yield RawRow(path, start, None, RowError(
          WHOLE_ROW,
          f"has {len(values)} columns, expected {len(names)} ({', '.join(names)}); quote fields that contain commas"))
      continue
    fields = dict(zip(names, values))
    bad = _invalid_text_path(fields, "")
    if bad:
      yield RawRow(path, start, None, RowError(bad, "is not valid UTF-8 text"))
      continue
    yield RawRow(path, start, fields)


def csv_header(path: str) -> list[str]:
  """The column names in the first row of a CSV file."""
  reader = csv.reader(io.StringIO(_decoded_text(path), newline=""))
  for values in reader:
    if values:
      return [v.strip() for v in values]
  return []


def read_text_lines(path: str, field: str) -> Iterator[RawRow]:
  """One row per non-blank line, the stripped line as `field`."""
  for number, raw in _lines(path):
    text = raw.decode("utf-8", errors="surrogateescape")
    if number == 1:
      text = text.removeprefix("\ufeff")
    if not text.strip():
      continue
    if _invalid_text_path(text, field):
      yield RawRow(path, number, None, RowError(field, "is not valid UTF-8 text"))
      continue
    yield RawRow(path, number, {field: text.strip()})


def read_parquet(path: str) -> Iterator[RawRow]:
  """Parquet rows as dicts; `line` is the 1-based row index (Parquet has no lines)."""
  try:
    import pyarrow.parquet as pq  # Optional: only Parquet releases need it.
  except ImportError as e:
    raise UserError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow, or convert the file to .jsonl") from e
  try:
    table = pq.read_table(path)
  except Exception as e:  # pyarrow raises several unrelated types for a damaged file
    raise UserError(f"{path}: not a readable Parquet file ({e}); re-download it") from e
  number = 0
  for batch in table.to_batches():
    for fields in batch.to_pylist():
      number += 1
      yield RawRow(path, number, fields, unit="row")


def read_json_records(path: str) -> Iterator[RawRow]:
  """A file holding ONE JSON array of objects (numbered as items from 1), or else JSON lines.

  HH-RLHF's red_team_attempts.jsonl.gz is, despite its name, a single JSON array;
  a copy re-saved by `datasets` is JSON lines. Both read the same.
  """
  try:
    with _open_binary(path) as f:
      head = f.read(4096).removeprefix(b"\xef\xbb\xbf").lstrip()
    text = _decoded_text(path) if head.startswith(b"[") else None
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
    raise UserError(f"{path}: cannot be read ({e}); re-download it (a .gz must be a complete gzip file)") from e
  if text is None:
    yield from read_jsonl(path)
    return
  try:
    values = json.loads(text)
  except json.JSONDecodeError as e:
    yield RawRow(path, e.lineno, None, RowError(WHOLE_ROW, f"is not a valid JSON array ({e.msg})"))
    return
  for number, fields in enumerate(values, start=1):
    if not isinstance(fields, dict):
      yield RawRow(path, number, None, RowError(WHOLE_ROW, f"is a JSON {type(fields).__name__}, expected an object"),
                   unit="item")
      continue
    bad = _invalid_text_path(fields, "")
    if bad:
      yield RawRow(path, number, None, RowError(bad, "is not valid UTF-8 text"), unit="item")
      continue
    yield RawRow(path, number, fields, unit="item")


def read_rows(path: str) -> Iterator[RawRow]:
  """Rows of a JSON-lines or Parquet file, chosen by extension."""
  name = os.path.basename(path)
  if name.endswith((".jsonl", ".jsonl.gz", ".json.gz")):
    return read_jsonl(path)
  if name.endswith(".parquet"):
    return read_parquet(path)
  raise UserError(f"{path}: unsupported file type; use .jsonl, .jsonl.gz or .parquet")
