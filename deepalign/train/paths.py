"""Workdir paths: a local directory or a Cloud Storage bucket (`gs://BUCKET/...`), one code path.

Everything that writes or reads a workdir goes through `etils.epath` (which reaches gs:// through
fsspec's gcsfs, or tf.io.gfile when TensorFlow is installed); orbax takes the same paths for the
checkpoints. A local path is used as before (plain `os` calls, atomic rename, O_APPEND); a remote
one (any `scheme://`) never touches `os.path`, which would turn `gs://b/run` into a local
directory `./gs:/b/run`.
"""

import os

from etils import epath

PathLike = str | os.PathLike


def is_local(path: PathLike) -> bool:
  """True for a path of this machine's filesystem; False for `gs://...` (any `scheme://`)."""
  return '://' not in os.fspath(path)


def to_path(path: PathLike) -> epath.Path:
  """`path` as an epath.Path (gs:// keeps its scheme; a local path stays relative if it was)."""
  return path if isinstance(path, epath.Path) else epath.Path(path)


def join(path: PathLike, *parts: str) -> str:
  """`os.path.join` for a local path (the same string as before), `/` under a gs:// URI."""
  if is_local(path):
    return os.path.join(os.fspath(path), *parts)
  return os.fspath(to_path(path).joinpath(*parts))


def absolute(path: PathLike) -> str:
  """`os.path.abspath` of a local path (orbax wants absolute local paths); a URI unchanged."""
  return os.path.abspath(os.fspath(path)) if is_local(path) else os.fspath(to_path(path))
