"""Your own prompt lists -> `harmful_prompt` records (TFDS builder `prompt_list`).

For evaluation sets that have no builder of their own: benign prompts for over-refusal
(XSTest-style lists, `"category": "benign"`), or harmful prompts with a harmful answer to
prefill (Qi et al. 2024's Harmful HEx-PHI prefixes, `"target": "<the harmful answer>"`).
Format: JSON lines, one object per line: `prompt` (string, required), `target` (string,
optional: the prefill source of a harmful prompt), `category` (string, optional; "benign"
marks a benign prompt, anything else is harmful). One split per file: train.jsonl, test.jsonl.
"""

from __future__ import annotations

from typing import Any

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import record_features
from deepalign.data.builders.split_file_builder import SplitFileBuilder
from deepalign.data.manual_readers import read_jsonl


def to_record(row: dict[str, Any]) -> dict[str, str]:
  optional = lambda name: row_fields.text(row, name, allow_empty=True) if name in row else ""
  return {"prompt": row_fields.text(row, "prompt"), "target": optional("target"),
          "category": optional("category")}


class PromptList(SplitFileBuilder):
  """{prompt[, target][, category]} JSON lines as `harmful_prompt` records; one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  READ = staticmethod(read_jsonl)
  TO_RECORD = staticmethod(to_record)
  EXPECTED = "train.jsonl / test.jsonl (prompts)"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put JSON-lines files with a `prompt` field (and optionally `target`, `category`) in manual_dir,
  named by split: train.jsonl, test.jsonl (.jsonl.gz works too). `"category": "benign"` marks a
  benign prompt (over-refusal); `target` is a harmful answer the prefill attack forces.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(features=record_features.harmful_prompt())
