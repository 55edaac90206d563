"""PKU-SafeRLHF preference pairs -> `preference` records with safety flags (TFDS builder `pku_safe_rlhf`).

Source: https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF (Ji et al. 2024,
arXiv 2406.15513; BeaverTails lineage). Each row has `prompt`, `response_0`,
`response_1`, `better_response_id`, `safer_response_id`, `is_response_0_safe`,
`is_response_1_safe` (other columns are ignored). The config picks which judgement
orders the pair: 'better' (helpfulness) or 'safer' (harmlessness). The record keeps
the safety flags of both responses: `chosen_safe`, `rejected_safe`.

Read as released: the Hub's `data/<generating model>/train.jsonl` files, or its parquet
(`data/train-00000-of-0000N.parquet`, or the conversion's `default/train/0000.parquet`).
Policies, counted per file (`builder.handled_rows`): an empty response is kept (a valid,
if poor, answer); a pair of identical responses is dropped (nothing to prefer).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import bad_rows, record_features
from deepalign.data.builders.manual_builder import ManualBuilder, ManualConfig
from deepalign.data.builders.split_files import split_files
from deepalign.data.manual_readers import read_rows
from deepalign.errors import UserError

PREFERENCES = ("better", "safer")


EMPTY_RESPONSE = "kept with an empty response"
IDENTICAL = "dropped: identical responses"


def to_record(row: dict[str, Any], preference: str) -> dict[str, Any] | bad_rows.Handled:
  """A PKU-SafeRLHF row -> {'prompt', 'chosen', 'rejected', 'chosen_safe', 'rejected_safe'}."""
  prompt = row_fields.text(row, "prompt")
  responses = (row_fields.text(row, "response_0", allow_empty=True), row_fields.text(row, "response_1", allow_empty=True))
  safe = (row_fields.boolean(row, "is_response_0_safe"), row_fields.boolean(row, "is_response_1_safe"))
  chosen = row_fields.choice(row, f"{preference}_response_id", (0, 1))
  # Both ids are validated whichever orders the pair: a bad row is bad for both configs.
  row_fields.choice(row, "better_response_id", (0, 1))
  row_fields.choice(row, "safer_response_id", (0, 1))
  if responses[0] == responses[1]:
    return bad_rows.Handled((IDENTICAL,))
  record = {"prompt": row_fields.messages_json([{"role": "user", "content": prompt}]),
            "chosen": responses[chosen], "rejected": responses[1 - chosen],
            "chosen_safe": safe[chosen], "rejected_safe": safe[1 - chosen]}
  if not all(r.strip() for r in responses):
    return bad_rows.Handled((EMPTY_RESPONSE,), record)
  return record


@dataclasses.dataclass(eq=False)
class PkuSafeRlhfConfig(ManualConfig):
  """`preference`: 'better' or 'safer' — which response id becomes `chosen`."""
  preference: str = "safer"


class PkuSafeRlhf(ManualBuilder):
  """PKU-SafeRLHF as `preference` records; configs 'safer' and 'better'."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Prompt as one user message; pair ordered by the config's response id; safety flags.",
                   "1.1.0": "Empty responses kept, identical pairs dropped, each counted (handled_rows)."}
  BUILDER_CONFIGS = [PkuSafeRlhfConfig(name=p, preference=p, description=f"pairs ordered by {p}_response_id")
                     for p in ("safer", "better")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the data files of https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF
  (e.g. `huggingface-cli download PKU-Alignment/PKU-SafeRLHF --repo-type dataset --local-dir DIR`)
  and pass DIR (or its data/ folder) as manual_dir. Files named train.jsonl / test.jsonl,
  .jsonl.gz, or train.parquet / train-00000-of-0000N.parquet (needs pyarrow) are found
  in manual_dir and its sub-directories (data/Alpaca-7B/train.jsonl, ...) and grouped by split.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(
        features=record_features.preference(chosen_safe=record_features.BOOL, rejected_safe=record_features.BOOL),
        homepage="https://huggingface.co/datasets/PKU-Alignment/PKU-SafeRLHF",
        citation="Ji et al. 2024, PKU-SafeRLHF, arXiv 2406.15513")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    if self.builder_config.preference not in PREFERENCES:
      raise UserError(f"PkuSafeRlhfConfig.preference={self.builder_config.preference!r}; "
                      f"use one of {list(PREFERENCES)}")
    manual_dir = os.fspath(dl_manager.manual_dir)
    files = split_files(manual_dir, ("*.jsonl", "*.jsonl.gz", "*.parquet"), recursive=True,
                        expected="train/test .jsonl, .jsonl.gz or .parquet files (PKU-SafeRLHF)")
    return {split: self._generate_examples(paths, manual_dir) for split, paths in files.items()}

  def _generate_examples(self, paths: list[str], manual_dir: str) -> Iterator[tuple[str, dict[str, Any]]]:
    preference = self.builder_config.preference
    for path in paths:
      yield from bad_rows.examples(read_rows(path), lambda row: to_record(row, preference),
                                   source=os.path.relpath(path, manual_dir), on_bad_row=self.on_bad_row,
                                   skipped_rows=self.skipped_rows,
                                   handled_rows=self.handled_rows)
