"""Checks a Hugging Face checkpoint directory without loading its weights.

    cfg = check_checkpoint_dir('path/to/model')   # ModelConfig, or one UserError

What `from_pretrained` would refuse, found from `config.json` and the safetensors headers alone
(a few KiB read per file): a pickle-only checkpoint, a missing or non-JSON `config.json`, an
unsupported architecture, a truncated or corrupt safetensors file (safetensors checks that the
header's offsets cover the file), a missing or unused tensor and a tensor of the wrong shape.
So a command can check every model it will read before it writes anything.
"""

from __future__ import annotations

import os

from deepalign.errors import UserError
from deepalign.models import hf_config, hf_files, hf_tensor_map
from deepalign.models.config import ModelConfig


def check_checkpoint_dir(hf_dir: str | os.PathLike, head: str | None = None,
                         what: str = '') -> ModelConfig:
  """The ModelConfig of `hf_dir` once its files are known to load; UserError otherwise.

  head: the head the caller needs ('lm', 'score', ...), checked too. what: how the caller names
  the directory (e.g. "config.eval.models base"), prefixed to the head error."""
  hf_dir = os.fspath(hf_dir)
  if os.path.isfile(hf_dir):
    hf_files.refuse_pickle(hf_dir)
  cfg = hf_config.load_hf_config(hf_dir)
  with hf_files.CheckpointFiles(hf_dir) as files:
    names = files.names
    prefix = hf_tensor_map.body_prefix(cfg)
    strip = not any(n.startswith(prefix) for n in names)
    links = hf_tensor_map.tensor_links(cfg)
    wanted = {}
    for link in links:
      wanted[link.hf_name.removeprefix(prefix) if strip else link.hf_name] = link.hf_shape
    tied = hf_tensor_map.tied_head_name(cfg)
    for name in sorted(names):
      if name not in wanted and name != tied and not hf_tensor_map.is_ignored_buffer(name):
        raise UserError(f'{files.file_of[name]}: tensor {name!r} is not used by a '
                        f'{hf_config.hf_architecture(cfg)} with this config.json; the files do not '
                        'match the config (fix config.json or remove the tensor).')
    for name, shape in wanted.items():
      if name not in names:
        raise UserError(f'{hf_dir}: tensor {name!r} is missing, but config.json '
                        f'({hf_config.hf_architecture(cfg)}) needs it; the checkpoint is '
                        'incomplete or config.json describes another model.')
      found = files.shape(name)
      if found != tuple(shape):
        raise UserError(f'{files.file_of[name]}: tensor {name!r} has shape {list(found)} but '
                        f'config.json implies {list(shape)}; the checkpoint and config.json do '
                        'not match.')
  if head is not None and cfg.head != head:
    raise UserError(f"{what + '=' if what else ''}'{hf_dir}' is a {cfg.head!r} model; "
                    f'a {head!r} head is needed here')
  return cfg
