"""Anthropic HH-RLHF preference pairs -> `preference` records (TFDS builder `hh_rlhf`).

Source: https://github.com/anthropics/hh-rlhf (also https://huggingface.co/datasets/Anthropic/hh-rlhf),
Bai et al. 2022, arXiv 2204.05862. Each row is {"chosen": dialogue, "rejected": dialogue},
a dialogue being "\\n\\nHuman: ...\\n\\nAssistant: ..." turns (Human -> user, Assistant ->
assistant). The record's `prompt` is the turns the two dialogues share (JSON chat messages),
`chosen` / `rejected` the assistant turn where they part.

The release is taken as it is; its known quirks are handled by these policies, each
counted per file in the log and in `builder.handled_rows` (harmless-base/test.jsonl.gz
has 4 rows of the first kind and 5 of the second):

  `kept with an empty response`: a final assistant turn that is empty ("...\\n\\nAssistant:")
      is a valid, if poor, response; the pair keeps it (its tokens are EOS alone).
  `kept, parted before the last turn`: the dialogues differ before their last turn. The
      prompt is the longest common prefix of turns that ends with a user turn followed by
      an assistant turn in both; the pair is those two assistant turns, later turns dropped.
  `dropped: identical responses`: the two responses are the same text (nothing to prefer).

A dialogue that does not start with a Human turn, or pair with no shared first Human turn,
is a malformed row (`on_bad_row`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import bad_rows, record_features
from deepalign.data.builders.manual_builder import ManualBuilder, ManualConfig
from deepalign.data.builders.split_files import split_files
from deepalign.data.manual_readers import RowError, read_jsonl

# A turn marker; the space after the colon is absent in a few released rows.
_TURN = re.compile(r"\n\n(Human|Assistant): ?")
_ROLES = {"Human": "user", "Assistant": "assistant"}

SUBSETS = ("harmless-base", "helpful-base", "helpful-online", "helpful-rejection-sampled")

EMPTY_RESPONSE = "kept with an empty response"
PARTED_EARLY = "kept, parted before the last turn"
IDENTICAL = "dropped: identical responses"


def parse_dialogue(dialogue: str, field: str) -> list[dict[str, str]]:
  """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{'role': 'user', 'content': 'a'}, {'role': 'assistant', ...}].

  Raises RowError(field) unless it starts with a Human turn.
  """
  parts = _TURN.split(dialogue)
  # parts = [before_first_marker, role, content, role, content, ...]
  if parts[0].strip() or len(parts) < 3:
    raise RowError(field, "does not start with '\\n\\nHuman:'")
  turns = [{"role": _ROLES[parts[i]], "content": parts[i + 1]} for i in range(1, len(parts), 2)]
  if turns[0]["role"] != "user":
    raise RowError(field, "does not start with '\\n\\nHuman:'")
  return turns


def parting_turn(chosen: list[dict[str, str]], rejected: list[dict[str, str]]) -> int | None:
  """The index of the assistant turn where the pair parts: the largest j such that turns [0, j)
  are shared, turn j - 1 is a user turn and turn j is an assistant turn in both; None if none."""
  shared = 0
  while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
    shared += 1
  for j in range(min(shared, len(chosen) - 1, len(rejected) - 1), 0, -1):
    if (chosen[j - 1]["role"] == "user" and chosen[j]["role"] == "assistant"
        and rejected[j]["role"] == "assistant"):
      return j
  return None


def to_record(row: dict[str, Any]) -> dict[str, str] | bad_rows.Handled:
  """{'chosen', 'rejected'} dialogues -> {'prompt', 'chosen', 'rejected'} (policies: module docstring)."""
  chosen = parse_dialogue(row_fields.text(row, "chosen"), "chosen")
  rejected = parse_dialogue(row_fields.text(row, "rejected"), "rejected")
  j = parting_turn(chosen, rejected)
  if j is None:
    raise RowError("rejected", "shares no prompt with 'chosen' (no common turns ending in a Human turn "
                   "that both answer)")
  record = {"prompt": row_fields.messages_json(chosen[:j]),
            "chosen": chosen[j]["content"], "rejected": rejected[j]["content"]}
  if record["chosen"] == record["rejected"]:
    return bad_rows.Handled((IDENTICAL,))
  policies = []
  if not record["chosen"].strip() or not record["rejected"].strip():
    policies.append(EMPTY_RESPONSE)
  if len(chosen) > j + 1 or len(rejected) > j + 1:
    policies.append(PARTED_EARLY)
  return bad_rows.Handled(tuple(policies), record) if policies else record


@dataclasses.dataclass(eq=False)
class HhRlhfConfig(ManualConfig):
  """`subset`: the release directory, e.g. 'harmless-base'."""
  subset: str = "harmless-base"


class HhRlhf(ManualBuilder):
  """Anthropic HH-RLHF as `preference` records; one config per released subset."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Prompt = shared dialogue as chat messages; chosen/rejected = final assistant turns.",
                   "1.1.0": "The release as it is: empty responses kept, pairs that part early cut where they "
                            "part, identical responses dropped, each counted (handled_rows)."}
  BUILDER_CONFIGS = [HhRlhfConfig(name=s.replace("-", "_"), subset=s, description=f"HH-RLHF {s}") for s in SUBSETS]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download the subset directories from https://github.com/anthropics/hh-rlhf (e.g.
  harmless-base/, helpful-base/) and put them in manual_dir unchanged, so that it holds
  e.g. manual_dir/harmless-base/train.jsonl.gz and manual_dir/harmless-base/test.jsonl.gz
  (.jsonl uncompressed works too). Each split file becomes a split.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(
        features=record_features.preference(),
        homepage="https://github.com/anthropics/hh-rlhf",
        citation="Bai et al. 2022, Training a Helpful and Harmless Assistant with RLHF, arXiv 2204.05862")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    subset_dir = os.path.join(manual_dir, self.builder_config.subset)
    files = split_files(subset_dir, ("*.jsonl", "*.jsonl.gz"),
                        expected=f"train.jsonl.gz / test.jsonl.gz (HH-RLHF {self.builder_config.subset})")
    return {split: self._generate_examples(paths, manual_dir) for split, paths in files.items()}

  def _generate_examples(self, paths: list[str], manual_dir: str) -> Iterator[tuple[str, dict[str, str]]]:
    for path in paths:
      yield from bad_rows.examples(read_jsonl(path), to_record, source=os.path.relpath(path, manual_dir),
                                   on_bad_row=self.on_bad_row, skipped_rows=self.skipped_rows,
                                   handled_rows=self.handled_rows)
