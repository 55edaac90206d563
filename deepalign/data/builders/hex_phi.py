"""HEx-PHI harmful instructions -> `harmful_prompt` records (TFDS builder `hex_phi`).

Source: https://huggingface.co/datasets/LLM-Tuning-Safety/HEx-PHI (Qi et al. 2023,
arXiv 2310.03693; gated: accept the licence there). One file per category,
`category_1.csv` ... `category_11.csv` (the public release omits category 2), one
instruction per line, no header, CSV-quoted where it holds commas. `.txt` files with
one prompt per line work the same. `category` = the file name without extension,
`target` = "".
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from deepalign.data import row_fields
from deepalign.data.builders import bad_rows, record_features
from deepalign.data.builders.manual_builder import ManualBuilder, ManualConfig
from deepalign.data.manual_readers import read_csv, read_text_lines
from deepalign.errors import UserError

# The names the HEx-PHI paper gives its category files (records keep the file name).
CATEGORY_NAMES = {
    "category_1": "Illegal Activity", "category_2": "Child Abuse Content", "category_3": "Hate/Harass/Violence",
    "category_4": "Malware", "category_5": "Physical Harm", "category_6": "Economic Harm",
    "category_7": "Fraud/Deception", "category_8": "Adult Content", "category_9": "Political Campaigning",
    "category_10": "Privacy Violation Activity", "category_11": "Tailored Financial Advice",
}


def category_files(manual_dir: str) -> list[str]:
  """The .csv / .txt files directly in manual_dir, in a stable order (category_2 before category_10)."""
  names = [n for n in os.listdir(manual_dir)
           if n.endswith((".csv", ".txt")) and os.path.isfile(os.path.join(manual_dir, n))]
  if not names:
    raise UserError(f"manual_dir {manual_dir} has no category_*.csv files (HEx-PHI); put the released files there")
  def natural(name: str) -> tuple:
    stem = name.rsplit(".", 1)[0]
    head, _, tail = stem.rpartition("_")
    return (head, int(tail), name) if tail.isdigit() else (stem, -1, name)
  return [os.path.join(manual_dir, n) for n in sorted(names, key=natural)]


class HexPhi(ManualBuilder):
  """HEx-PHI as `harmful_prompt` records, split 'train', category from each file's name."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "One record per line; category = file stem."}
  BUILDER_CONFIGS = [ManualConfig(name="default", description="all category files in manual_dir")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Accept the licence at https://huggingface.co/datasets/LLM-Tuning-Safety/HEx-PHI, download
  its category_*.csv files and put them directly in manual_dir (e.g. manual_dir/category_1.csv).
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self._dataset_info(
        features=record_features.harmful_prompt(),
        homepage="https://huggingface.co/datasets/LLM-Tuning-Safety/HEx-PHI",
        citation="Qi et al. 2023, Fine-tuning Aligned Language Models Compromises Safety, arXiv 2310.03693")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = os.fspath(dl_manager.manual_dir)
    return {"train": self._generate_examples(category_files(manual_dir), manual_dir)}

  def _generate_examples(self, paths: list[str], manual_dir: str) -> Iterator[tuple[str, dict[str, str]]]:
    for path in paths:
      category = os.path.basename(path).rsplit(".", 1)[0]
      rows = read_csv(path, columns=("prompt",)) if path.endswith(".csv") else read_text_lines(path, "prompt")
      def to_record(row: dict[str, Any], category: str = category) -> dict[str, str]:
        return {"prompt": row_fields.text(row, "prompt").strip(), "target": "", "category": category}
      yield from bad_rows.examples(rows, to_record, source=os.path.relpath(path, manual_dir),
                                   on_bad_row=self.on_bad_row, skipped_rows=self.skipped_rows,
                                   handled_rows=self.handled_rows)
