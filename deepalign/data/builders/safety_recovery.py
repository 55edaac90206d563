"""Safety-recovery triples -> `recovery` records (TFDS builder `safety_recovery`).

The data of the recovery penalty / Qi et al.'s data augmentation (arXiv 2406.05946,
https://github.com/Unispac/shallow-vs-deep-alignment; their triples are released at
https://huggingface.co/datasets/Unispac/shallow-vs-deep-safety-alignment-dataset):
a harmful `prompt`, a `harmful_response` to it (its prefixes are the harmful states
recovery starts from) and a `refusal` (what the model should say instead). Format:
JSON lines, one object per line, in either layout (other fields ignored):

  deepalign's: `prompt`, `harmful_response`, `refusal`.
  Qi et al.'s release: `instruction`, optional `input`, `harmful`, `refusal`. As their
      loader (finetuning_buckets/datasets/utils/finetuning_data_wrapper.py) does, the
      prompt is the instruction, followed by a blank line and the input when the input
      is not blank.
"""

from __future__ import annotations

from typing import Any

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import record_features
from deepalign.data.builders.split_file_builder import SplitFileBuilder
from deepalign.data.manual_readers import read_jsonl


def _qi_prompt(row: dict[str, Any]) -> str:
  instruction = row_fields.text(row, "instruction")
  extra = row_fields.text(row, "input", allow_empty=True) if row.get("input") is not None else ""
  return f"{instruction}\n\n{extra}" if extra.strip() else instruction


def to_record(row: dict[str, Any]) -> dict[str, str]:
  if "prompt" not in row and "instruction" in row:  # Qi et al.'s layout
    return {"prompt": _qi_prompt(row), "harmful_response": row_fields.text(row, "harmful"),
            "refusal": row_fields.text(row, "refusal")}
  return {"prompt": row_fields.text(row, "prompt"), "harmful_response": row_fields.text(row, "harmful_response"),
          "refusal": row_fields.text(row, "refusal")}


class SafetyRecovery(SplitFileBuilder):
  """{prompt, harmful_response, refusal} JSON lines as `recovery` records; one split per file."""

  READ = staticmethod(read_jsonl)
  TO_RECORD = staticmethod(to_record)
  EXPECTED = "train.jsonl / test.jsonl (recovery triples)"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Qi et al.'s layout (instruction, input, harmful, refusal) read as released."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Put JSON-lines files with fields prompt, harmful_response, refusal in manual_dir, named by
  split: train.jsonl, test.jsonl (.jsonl.gz works too). Qi et al.'s files
  (fields instruction, input, harmful, refusal; e.g. their repository's
  finetuning_buckets/datasets/data/tasks/data_augmentation/llama2_safety_data_direct.jsonl)
  are read as they are: that file becomes the split `llama2_safety_data_direct` (rename it
  train.jsonl for a `train` split).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(
        features=record_features.recovery(),
        homepage="https://github.com/Unispac/shallow-vs-deep-alignment",
        citation="Qi et al. 2024, Safety Alignment Should Be Made More Than Just a Few Tokens Deep, arXiv 2406.05946")
