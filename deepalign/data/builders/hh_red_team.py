"""HH-RLHF red-team attempts -> `harmful_prompt` records (TFDS builder `hh_red_team`).

Source: https://github.com/anthropics/hh-rlhf `red-team-attempts/red_team_attempts.jsonl.gz`
(Ganguli et al. 2022, arXiv 2209.07858): 38,961 red-team conversations, despite the
name ONE JSON array (a copy re-saved as JSON lines reads the same). Each has a
`transcript` ("\\n\\nHuman: ...\\n\\nAssistant: ..."), the red teamer's `rating` of their own
success (0-4), a `task_description` and more (ignored). They are a source of harmful
prompts as the red-teaming prompts Qi et al. drew on: `prompt` = the transcript's first
Human turn (what the attacker opened with), `target` = "" (the transcripts' answers are
not a harmful answer to prefill), `category` = "red_team".

Configs: `all`, and `successful` (rating >= 3). Policies, counted per file in the log
and `builder.handled_rows`:
  `dropped: rating below the config's minimum` (config `successful` only);
  `dropped: empty first Human turn`;
  `dropped: repeated prompt` (a first Human turn already taken from an earlier attempt).
A transcript that does not start with a Human turn, or a non-number rating, is a
malformed row (`on_bad_row`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import bad_rows, record_features
from deepalign.data.builders.hh_rlhf import parse_dialogue
from deepalign.data.builders.manual_builder import ManualBuilder, ManualConfig
from deepalign.data.builders.split_files import split_files
from deepalign.data.manual_readers import RowError, read_json_records

LOW_RATING = "dropped: rating below the config's minimum"
EMPTY_PROMPT = "dropped: empty first Human turn"
REPEATED = "dropped: repeated prompt"


def first_human_turn(row: dict[str, Any]) -> str:
  """The opening Human turn of the row's `transcript`, stripped."""
  return parse_dialogue(row_fields.text(row, "transcript"), "transcript")[0]["content"].strip()


def rating(row: dict[str, Any]) -> float:
  value = row.get("rating")
  if isinstance(value, bool) or not isinstance(value, (int, float)):
    raise RowError("rating", f"is {value!r}, expected a number (0-4)")
  return float(value)


@dataclasses.dataclass(eq=False)
class HhRedTeamConfig(ManualConfig):
  """`min_rating`: attempts the red teamer rated below this are dropped."""
  min_rating: float = 0.0


class HhRedTeam(ManualBuilder):
  """HH-RLHF red-team transcripts as harmful prompts (their first Human turns), split 'train'."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First Human turn of each attempt, repeats dropped."}
  BUILDER_CONFIGS = [HhRedTeamConfig(name="all", description="every attempt"),
                     HhRedTeamConfig(name="successful", min_rating=3.0,
                                     description="attempts the red teamer rated 3 or 4 (of 0-4)")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download red-team-attempts/red_team_attempts.jsonl.gz from https://github.com/anthropics/hh-rlhf
  and put it in manual_dir as it is (manual_dir/red_team_attempts.jsonl.gz, or keep the
  red-team-attempts/ directory: files are found in sub-directories too).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(
        features=record_features.harmful_prompt(),
        homepage="https://github.com/anthropics/hh-rlhf",
        citation="Ganguli et al. 2022, Red Teaming Language Models to Reduce Harms, arXiv 2209.07858")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    files = split_files(manual_dir, ("red_team_attempts*.json*",), recursive=True,
                        expected="red_team_attempts.jsonl.gz (HH-RLHF red-team-attempts)")
    return {"train": self._generate_examples([p for ps in files.values() for p in ps], manual_dir)}

  def _generate_examples(self, paths: list[str], manual_dir: str) -> Iterator[tuple[str, dict[str, str]]]:
    seen: set[str] = set()
    min_rating = self.builder_config.min_rating

    def to_record(row: dict[str, Any]) -> dict[str, str] | bad_rows.Handled:
      prompt, score = first_human_turn(row), rating(row)
      if score < min_rating:
        return bad_rows.Handled((LOW_RATING,))
      if not prompt:
        return bad_rows.Handled((EMPTY_PROMPT,))
      if prompt in seen:
        return bad_rows.Handled((REPEATED,))
      seen.add(prompt)
      return {"prompt": prompt, "target": "", "category": "red_team"}

    for path in paths:
      yield from bad_rows.examples(read_json_records(path), to_record, source=os.path.relpath(path, manual_dir),
                                   on_bad_row=self.on_bad_row, skipped_rows=self.skipped_rows,
                                   handled_rows=self.handled_rows)
