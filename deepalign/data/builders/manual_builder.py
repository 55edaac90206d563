"""The base of every deepalign TFDS builder: reads a release from a local manual dir, writes array_record.

Nothing is downloaded: the user puts the public release in a directory and passes it
as `tfds.download.DownloadConfig(manual_dir=...)` (or calls `prepare`). The prepared
dataset is `array_record`, read with `builder.as_data_source(split)`, so no
TensorFlow is needed (TFDS 4.9 prepares array_record without it).

TFDS workaround, in this one place: TFDS already writes into an `incomplete.*`
directory and renames it when done, and removes it on failure, but a failed
preparation still leaves the empty config/version directories, `.config/` metadata
and an empty `downloads/extracted/` in the data dir. `download_and_prepare` here
removes whatever it created when preparation fails (never a dataset that another
process completed meanwhile) and keeps TFDS's download dir in a temporary
directory, so a data dir only ever holds complete datasets. On a pod, prepare on
one process and have the others wait: TFDS's final rename is not a lock.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from typing import Any

import tensorflow_datasets as tfds
from etils import epath

from deepalign.data.builders.bad_rows import check_on_bad_row
from deepalign.errors import UserError


@dataclasses.dataclass(eq=False)
class ManualConfig(tfds.core.BuilderConfig):
  """A builder config with the bad-row policy ('error' or 'skip', see `bad_rows`)."""
  on_bad_row: str = "error"


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A GeneratorBasedBuilder over a manual dir, writing array_record, leaving no debris.

  Builders that generate their data (the synthetic harm language) set
  `NEEDS_MANUAL_DIR = False` and keep the rest.
  """

  NEEDS_MANUAL_DIR = True

  def __init__(self, *, file_format: str | None = None, **kwargs: Any):
    super().__init__(file_format=file_format or "array_record", **kwargs)

  @property
  def on_bad_row(self) -> str:
    return check_on_bad_row(getattr(self.builder_config, "on_bad_row", "error"))

  def _dataset_info(self, features: tfds.features.FeaturesDict, **kwargs: Any) -> tfds.core.DatasetInfo:
    """DatasetInfo whose metadata records, per source file, how many rows `on_bad_row='skip'` dropped.

    Read back with `builder.info.metadata['skipped_rows']` ({relative path: count}); the
    rows a documented policy kept or dropped, by policy, in `['handled_rows']`.
    """
    return self.dataset_info_from_configs(
        features=features, metadata=tfds.core.MetadataDict(skipped_rows={}, handled_rows={}), **kwargs)

  @property
  def skipped_rows(self) -> dict[str, int]:
    """{source file relative to manual_dir: rows dropped} — filled while preparing, saved with the data."""
    return self.info.metadata["skipped_rows"]

  @property
  def handled_rows(self) -> dict[str, dict[str, int]]:
    """{source file relative to manual_dir: {policy: rows}} — the release's known quirks, as handled."""
    return self.info.metadata.setdefault("handled_rows", {})

  def download_and_prepare(self, *, download_dir=None, download_config=None, file_format=None, **kwargs) -> None:
    if self.is_prepared():
      return
    manual_dir = download_config.manual_dir if download_config else None
    if self.NEEDS_MANUAL_DIR:
      self._check_manual_dir(manual_dir)
    check_on_bad_row(self.on_bad_row)
    created = self._missing_dirs()
    try:
      with tempfile.TemporaryDirectory(prefix="deepalign_tfds_downloads_") as tmp:
        super().download_and_prepare(download_dir=download_dir or tmp, download_config=download_config,
                                     file_format=file_format, **kwargs)
    except BaseException:
      self._remove(created)
      raise

  def _check_manual_dir(self, manual_dir) -> None:
    if not manual_dir:
      raise UserError(f"{self.name}: no manual_dir given; pass tfds.download.DownloadConfig(manual_dir=DIR) "
                      f"with the release in DIR (see {type(self).__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS)")
    if not os.path.isdir(manual_dir) or not os.listdir(manual_dir):
      raise UserError(f"{self.name}: manual_dir {manual_dir} does not exist or is empty; put the release there "
                      f"(see {type(self).__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS)")

  def _missing_dirs(self) -> list[epath.Path]:
    """The directories that preparation may create and that do not exist yet, outermost first.

    epath, as TFDS itself uses, so a gs:// data dir is cleaned up too.
    """
    root = epath.Path(self._data_dir_root)
    dataset_dir = root / self.name
    candidates = [root, dataset_dir, dataset_dir / ".config"]
    below = []  # dataset_dir/<config>/<version>, innermost first
    path = epath.Path(self.data_path)
    while dataset_dir in path.parents:
      below.append(path)
      path = path.parent
    candidates += reversed(below)
    return [p for p in candidates if not p.exists()]

  def _remove(self, paths: list[epath.Path]) -> None:
    """Remove what a failed preparation created, but never a dataset completed meanwhile.

    Another process (another host of a pod, another config) may have finished a
    dataset under a directory this one created; innermost first, a directory is
    removed only if no complete dataset (dataset_info.json) lies below it.
    """
    root = epath.Path(self._data_dir_root)
    for path in reversed(paths):
      if not path.exists():
        continue
      guarded = path.parent if path.name == ".config" else path  # .config serves every config of the dataset
      # Datasets sit at root/<name>/<config>/<version>/; epath (GCS) has no recursive glob.
      depth = len(guarded.relative_to(root).parts)
      pattern = "/".join(["*"] * (3 - depth) + ["dataset_info.json"])
      if not any(guarded.glob(pattern)):
        path.rmtree()


def configured(builder_cls: type[ManualBuilder], *, data_dir: str, config: str | ManualConfig | None = None,
               on_bad_row: str = "error") -> ManualBuilder:
  """The builder `prepare` prepares, not prepared here: to read what another process prepared.

  `on_bad_row='skip'` names a separate config (`<name>-skip_bad_rows`), so a dataset
  with rows dropped is never mistaken for the complete one.
  """
  check_on_bad_row(on_bad_row)
  if on_bad_row != "error":
    config = builder_cls(data_dir=data_dir, config=config).builder_config
    if config.on_bad_row != on_bad_row:
      config = dataclasses.replace(config, name=f"{config.name}-{on_bad_row}_bad_rows", on_bad_row=on_bad_row)
  return builder_cls(data_dir=data_dir, config=config)


def prepare(builder_cls: type[ManualBuilder], *, data_dir: str, manual_dir: str | None = None,
            config: str | ManualConfig | None = None, on_bad_row: str = "error") -> ManualBuilder:
  """Prepare `builder_cls` from `manual_dir` into `data_dir` (once) and return the builder.

  `on_bad_row` as in `configured`. Read a split with `builder.as_data_source('train')`;
  text fields come back as UTF-8 `bytes`.
  """
  builder = configured(builder_cls, data_dir=data_dir, config=config, on_bad_row=on_bad_row)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  return builder
