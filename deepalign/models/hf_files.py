"""The weight files of a Hugging Face checkpoint directory: safetensors in, safetensors out.

Reads `model.safetensors`, or the shards a `model.safetensors.index.json` names, lazily (one
tensor at a time, through `safetensors.safe_open(..., framework='numpy')`; no torch). Pickle
checkpoints (`*.bin`, `*.pt`, `*.pth`, `*.ckpt`) are refused, never unpickled: loading a pickle
runs whatever code it contains. Writes like transformers' `save_pretrained`: one file, or
`model-0000i-of-0000n.safetensors` shards plus the index when above `max_shard_size`.
"""

from __future__ import annotations

import json
import os
import re
import struct
from typing import Callable, Iterator

import ml_dtypes
from etils import epath
import numpy as np
import safetensors
import safetensors.numpy

from deepalign.errors import UserError

SINGLE_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
PICKLE_SUFFIXES = ('.bin', '.pt', '.pth', '.ckpt', '.pkl')
_CONVERT_HINT = ('convert it to safetensors first, e.g. with transformers: '
                 'AutoModelForCausalLM.from_pretrained(dir).save_pretrained(out, safe_serialization=True)')

# safetensors dtype tag -> numpy dtype, for the raw fallback reader (bf16 on old safetensors).
_RAW_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': ml_dtypes.bfloat16,
               'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
               'BOOL': np.bool_}


def refuse_pickle(path: str) -> None:
  """UserError if `path` is a pickle checkpoint file."""
  if path.endswith(PICKLE_SUFFIXES) or path.endswith('.bin.index.json'):
    raise UserError(f'{path}: pickle checkpoints are not loaded (unpickling runs arbitrary code); '
                    f'{_CONVERT_HINT}.')


class CheckpointFiles:
  """The tensors of a checkpoint directory, by name, read on demand.

  Usage: `with CheckpointFiles(dir) as files: files.shape(n); files.read(n)`.
  """

  def __init__(self, hf_dir: str | os.PathLike):
    self.dir = os.fspath(hf_dir)
    if os.path.isfile(self.dir):
      refuse_pickle(self.dir)
      raise UserError(f'{self.dir}: expected a checkpoint directory (with config.json and '
                      f'{SINGLE_FILE}), got a file; pass its directory.')
    if not os.path.isdir(self.dir):
      raise UserError(f'{self.dir}: no such checkpoint directory; pass a directory holding '
                      f'config.json and {SINGLE_FILE}.')
    self._handles: dict[str, object] = {}
    self.file_of: dict[str, str] = self._discover()
    # (name, ((start, stop), ...)) of every `read_slice`: what this process read (tests, logs).
    self.slices_read: list[tuple[str, tuple[tuple[int, int], ...]]] = []

  def _discover(self) -> dict[str, str]:
    """tensor name -> path of the file that holds it."""
    index = os.path.join(self.dir, INDEX_FILE)
    if os.path.isfile(index):
      return self._from_index(index)
    files = sorted(f for f in os.listdir(self.dir) if f.endswith('.safetensors'))
    if SINGLE_FILE in files:
      files = [SINGLE_FILE]  # transformers ignores stray *.safetensors next to it
    if not files:
      pickles = sorted(f for f in os.listdir(self.dir) if f.endswith(PICKLE_SUFFIXES))
      if pickles:
        refuse_pickle(os.path.join(self.dir, pickles[0]))
      raise UserError(f'{self.dir}: no {SINGLE_FILE} or {INDEX_FILE}; pass a Hugging Face '
                      'checkpoint directory saved with safe_serialization=True.')
    out: dict[str, str] = {}
    for f in files:
      path = os.path.join(self.dir, f)
      for name in self._open(path).keys():
        if name in out:
          raise UserError(f'{path}: tensor {name!r} is also in {out[name]}; remove one of the files.')
        out[name] = path
    return out

  def _from_index(self, index: str) -> dict[str, str]:
    try:
      with open(index) as f:
        weight_map = json.load(f)['weight_map']
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise UserError(f'{index}: not a safetensors index (needs a "weight_map" object: {e!r}); '
                      're-save the checkpoint.') from None
    out = {}
    for name, file in weight_map.items():
      path = os.path.join(self.dir, file)
      if not os.path.isfile(path):
        raise UserError(f'{index}: shard {file!r} (holding {name!r}) is missing; download all '
                        'shards the index names.')
      out[name] = path
    return out

  def _open(self, path: str):
    if path not in self._handles:
      try:
        self._handles[path] = safetensors.safe_open(path, framework='numpy')
      except Exception as e:  # safetensors raises its own error types for a corrupt header
        raise UserError(f'{path}: not a readable safetensors file ({e}); re-download it.') from None
    return self._handles[path]

  @property
  def names(self) -> set[str]:
    return set(self.file_of)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._open(self.file_of[name]).get_slice(name).get_shape())

  def read(self, name: str) -> np.ndarray:
    path = self.file_of[name]
    handle = self._open(path)
    if name not in handle.keys():
      raise UserError(f'{path}: tensor {name!r} is listed in {INDEX_FILE} but not in this shard; '
                      're-download the checkpoint.')
    try:
      return handle.get_tensor(name)
    except TypeError:
      # safetensors < 0.6 cannot make numpy bfloat16 arrays; read the bytes ourselves.
      return _read_raw(path, name)

  def read_slice(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    """Block `index` (one slice per dimension) of tensor `name`, reading only those bytes'
    rows from the file (`safe_open(...).get_slice`): a host loads just its shards."""
    path = self.file_of[name]
    handle = self._open(path)
    if name not in handle.keys():
      raise UserError(f'{path}: tensor {name!r} is listed in {INDEX_FILE} but not in this shard; '
                      're-download the checkpoint.')
    self.slices_read.append((name, tuple((s.start, s.stop) for s in index)))
    try:
      return handle.get_slice(name)[index]
    except TypeError:
      return _read_raw(path, name)[index]  # safetensors < 0.6: no numpy bfloat16

  def close(self) -> None:
    self._handles.clear()

  def __enter__(self) -> 'CheckpointFiles':
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _read_raw(path: str, name: str) -> np.ndarray:
  """One tensor from the safetensors layout: u64 header size, JSON header, then the data."""
  with open(path, 'rb') as f:
    (size,) = struct.unpack('<Q', f.read(8))
    entry = json.loads(f.read(size))[name]
    start, end = entry['data_offsets']
    f.seek(8 + size + start)
    data = f.read(end - start)
  return np.frombuffer(data, dtype=_RAW_DTYPES[entry['dtype']]).reshape(entry['shape']).copy()


def parse_size(size: int | str) -> int:
  """Bytes in `size`: an int, or '5GB' (10**9) / '5GiB' (2**30) like transformers."""
  if isinstance(size, int):
    return size
  m = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?)B\s*', str(size), flags=re.IGNORECASE)
  if not m:
    raise UserError(f'max_shard_size={size!r} is not a size; use an int (bytes) or e.g. "5GB".')
  base = 1024 if m.group(3) else 1000
  return int(float(m.group(1)) * base ** ' KMGT'.index(m.group(2).upper() or ' '))


def _shards(sizes: dict[str, int], limit: int) -> Iterator[list[str]]:
  """Consecutive groups of tensor names whose bytes stay under `limit` (a bigger one goes alone)."""
  shard: list[str] = []
  size = 0
  for name, nbytes in sizes.items():
    if shard and size + nbytes > limit:
      yield shard
      shard, size = [], 0
    shard.append(name)
    size += nbytes
  if shard:
    yield shard


def write_safetensors(tensors: dict[str, np.ndarray | Callable[[], np.ndarray]], out_dir: str,
                      max_shard_size: int | str = '5GB',
                      sizes: dict[str, int] | None = None) -> list[str]:
  """Writes `tensors` as transformers does; returns the file names written.

  A value may be a function returning the array (with its byte count in `sizes`): it is
  called when its shard is written and dropped after, so at most one shard is in memory.
  Earlier weight files in `out_dir` are removed first, so no stale shard can shadow the new ones.
  """
  limit = parse_size(max_shard_size)
  if sizes is None:
    sizes = {name: a.nbytes for name, a in tensors.items()}
  out = epath.Path(out_dir)  # a local directory or gs:// (a TPU pod's workdir)
  local = '://' not in os.fspath(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  for f in out.iterdir():
    if f.name == INDEX_FILE or re.fullmatch(r'model(-\d{5}-of-\d{5})?\.safetensors', f.name):
      f.unlink()
  groups = list(_shards(sizes, limit))
  materialize = lambda group: {n: tensors[n]() if callable(tensors[n]) else tensors[n] for n in group}
  shards = (materialize(group) for group in groups)
  # transformers refuses safetensors files whose metadata does not say which framework wrote them.
  metadata = {'format': 'pt'}

  def save(shard: dict[str, np.ndarray], file: str) -> None:
    if local:
      safetensors.numpy.save_file(shard, os.path.join(os.fspath(out_dir), file), metadata=metadata)
    else:  # save_file wants a local path: the shard's bytes go up as one object
      (out / file).write_bytes(safetensors.numpy.save(shard, metadata=metadata))

  if len(groups) == 1:
    save(next(shards), SINGLE_FILE)
    return [SINGLE_FILE]
  names, weight_map = [], {}
  for i, shard in enumerate(shards):
    file = f'model-{i + 1:05d}-of-{len(groups):05d}.safetensors'
    save(shard, file)
    names.append(file)
    weight_map.update({name: file for name in shard})
    del shard
  index = {'metadata': {'total_size': int(sum(sizes.values()))},
           'weight_map': dict(sorted(weight_map.items()))}
  (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + '\n')
  return names + [INDEX_FILE]
