"""Chat conversations -> `sft` records (TFDS builder `sft_conversations`).

The format TRL, Hugging Face chat datasets (e.g. https://huggingface.co/datasets/HuggingFaceH4/ultrachat_200k,
`messages` column) and OpenAI fine-tuning files share: one JSON object per line with
`messages`, a list of {"role": "system"|"user"|"assistant", "content": str}. A system
turn may only come first, there must be a user turn, and the last turn must be a
non-empty assistant turn. The record is the validated list as a JSON string (only
role and content kept).
"""

from __future__ import annotations

from typing import Any

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import record_features
from deepalign.data.builders.split_file_builder import SplitFileBuilder
from deepalign.data.manual_readers import read_rows


def to_record(row: dict[str, Any]) -> dict[str, str]:
  return {"messages": row_fields.messages_json(row_fields.messages(row, "messages"))}


class SftConversations(SplitFileBuilder):
  """`messages` JSON lines (or Parquet) as `sft` records; one split per file name."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  READ = staticmethod(read_rows)
  TO_RECORD = staticmethod(to_record)
  PATTERNS = ("*.jsonl", "*.jsonl.gz", "*.parquet")
  EXPECTED = "train.jsonl / test.jsonl with a messages field"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put files with a `messages` column in manual_dir, named by split: train.jsonl, test.jsonl
  (.jsonl.gz, or Parquet shards like train_sft-00000-of-00003.parquet, which need pyarrow).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(features=record_features.sft())
