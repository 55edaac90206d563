"""AdvBench harmful behaviors -> `harmful_prompt` records (TFDS builder `adv_bench`).

Source: https://github.com/llm-attacks/llm-attacks/blob/main/data/advbench/harmful_behaviors.csv
(Zou et al. 2023, arXiv 2307.15043): a CSV with header `goal,target`, fields quoted
where they hold commas. `prompt` = goal, `target` = the affirmative start the attack
aims for ("Sure, here is ..."), `category` = "" (AdvBench has no categories). The
copy whose header says `prompt,target` reads the same.
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import bad_rows, record_features
from deepalign.data.builders.manual_builder import ManualBuilder, ManualConfig
from deepalign.data.builders.split_files import split_files
from deepalign.data.manual_readers import csv_header, read_csv
from deepalign.errors import UserError

COLUMNS = ("goal", "target")


def to_record(row: dict[str, Any]) -> dict[str, str]:
  goal = "goal" if "goal" in row or "prompt" not in row else "prompt"  # the Hub copy names it `prompt`
  return {"prompt": row_fields.text(row, goal), "target": row_fields.text(row, "target", allow_empty=True),
          "category": ""}


class AdvBench(ManualBuilder):
  """AdvBench harmful_behaviors.csv as `harmful_prompt` records, split 'train' (all 520 rows)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "goal -> prompt, target -> target, empty category."}
  BUILDER_CONFIGS = [ManualConfig(name="harmful_behaviors", description="harmful_behaviors.csv")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/harmful_behaviors.csv
  and put it in manual_dir as harmful_behaviors.csv (CSV with header goal,target).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(
        features=record_features.harmful_prompt(),
        homepage="https://github.com/llm-attacks/llm-attacks",
        citation=("Zou et al. 2023, Universal and Transferable Adversarial Attacks on Aligned Language Models, "
                  "arXiv 2307.15043"))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    files = split_files(manual_dir, ("harmful_behaviors*.csv",), expected="harmful_behaviors.csv (AdvBench)")
    paths = [p for ps in files.values() for p in ps]
    for path in paths:
      header = csv_header(path)
      missing = [c for c in COLUMNS if c not in header and not (c == "goal" and "prompt" in header)]
      if missing:
        raise UserError(f"{path}, line 1: field '{missing[0]}': missing from the CSV header {header}; "
                        f"the header must be {','.join(COLUMNS)}")
    return {"train": self._generate_examples(paths, manual_dir)}

  def _generate_examples(self, paths: list[str], manual_dir: str) -> Iterator[tuple[str, dict[str, str]]]:
    for path in paths:
      yield from bad_rows.examples(read_csv(path), to_record, source=os.path.relpath(path, manual_dir),
                                   on_bad_row=self.on_bad_row, skipped_rows=self.skipped_rows,
                                   handled_rows=self.handled_rows)
