"""Reading the Hugging Face files that name a checkpoint's special tokens.

A checkpoint spreads its special tokens over several files; transformers reads
them in this order of precedence, and so do we:

1. `tokenizer_config.json`: `bos_token`, `eos_token`, ... as a string or as a
   serialized `AddedToken` (`{"content": "<s>", ...}`); any other top-level
   `*_token` key (e.g. `image_token`) is a model-specific special token.
2. `special_tokens_map.json` (legacy): the same keys, for those 1. lacks.
3. `generation_config.json`, then `config.json` (and its `text_config`): ids
   (`bos_token_id`, `eos_token_id` (an int or a list: every id that stops
   generation), `pad_token_id`). transformers' tokenizer never reads them; we use
   them only for the stop ids and for an eos the tokenizer files do not name.
   A model config's `bos_token_id` is not the tokenizer's: Qwen2's config.json
   says 151643 while its tokenizer_config.json says `"bos_token": null`, and
   transformers starts a chat without it.
"""

from __future__ import annotations

import json
import os
from typing import Any

from deepalign.errors import UserError

# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order.
NAMED_SPECIAL_TOKENS = ('bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token',
                        'cls_token', 'mask_token')


def read_json(path: str) -> dict[str, Any] | None:
  """The JSON object in `path`, or None if there is no such file."""
  if not os.path.isfile(path):
    return None
  try:
    with open(path, encoding='utf-8') as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise UserError(f'{path} is not valid JSON ({e}); re-download the checkpoint file') from e
  if not isinstance(value, dict):
    raise UserError(f'{path} holds a {type(value).__name__}, not a JSON object; re-download the checkpoint file')
  return value


def _token_content(value: Any) -> str | None:
  """The text of a special token stored as a string or a serialized AddedToken."""
  if isinstance(value, str):
    return value
  if isinstance(value, dict) and isinstance(value.get('content'), str):
    return value['content']
  return None


def special_token_strings(directory: str | None) -> dict[str, str]:
  """Special tokens by attribute name (`'bos_token'` -> `'<s>'`), as transformers resolves them.

  Includes model-specific `*_token` keys of tokenizer_config.json (transformers
  passes them to chat templates too). Missing files give an empty dict.
  """
  if directory is None:
    return {}
  out: dict[str, str] = {}
  config = read_json(os.path.join(directory, 'tokenizer_config.json')) or {}
  legacy = read_json(os.path.join(directory, 'special_tokens_map.json')) or {}
  for source in (config, legacy):
    for key, value in source.items():
      if key in out or not key.endswith('_token'):
        continue
      content = _token_content(value)
      if content is not None:
        out[key] = content
  return out


def declared_special_tokens(directory: str | None) -> set[str]:
  """Attribute names the tokenizer files set, to a token or explicitly to null (`"bos_token": null`).

  A name set to null has no token, whatever the backend's default would be.
  """
  if directory is None:
    return set()
  names: set[str] = set()
  for name in ('tokenizer_config.json', 'special_tokens_map.json'):
    source = read_json(os.path.join(directory, name)) or {}
    names.update(key for key in source if key.endswith('_token'))
  return names


def _as_id_list(value: Any) -> list[int]:
  if isinstance(value, bool):  # bool is an int subclass; never a token id
    return []
  if isinstance(value, int):
    return [value]
  if isinstance(value, (list, tuple)):
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
  return []


def model_config_token_ids(directory: str | None) -> dict[str, list[int]]:
  """`{'bos_token': [...], 'eos_token': [...], 'pad_token': [...]}` from generation_config/config.json.

  The first file that names an id wins for that name; eos may hold several ids
  (e.g. Llama-3-Instruct stops at both <|end_of_text|> and <|eot_id|>).
  """
  if directory is None:
    return {}
  sources = []
  generation = read_json(os.path.join(directory, 'generation_config.json'))
  if generation:
    sources.append(generation)
  model = read_json(os.path.join(directory, 'config.json'))
  if model:
    sources.append(model)
    # Multimodal checkpoints (Gemma 3, ...) keep the language model's ids here.
    if isinstance(model.get('text_config'), dict):
      sources.append(model['text_config'])
  out: dict[str, list[int]] = {}
  for source in sources:
    for name in ('bos_token', 'eos_token', 'pad_token'):
      ids = _as_id_list(source.get(f'{name}_id'))
      if ids and name not in out:
        out[name] = ids
  return out


def added_tokens(directory: str | None) -> dict[int, str]:
  """`added_tokens_decoder` of tokenizer_config.json: id -> token text."""
  if directory is None:
    return {}
  config = read_json(os.path.join(directory, 'tokenizer_config.json')) or {}
  decoder = config.get('added_tokens_decoder') or {}
  out: dict[int, str] = {}
  if isinstance(decoder, dict):
    for key, value in decoder.items():
      content = _token_content(value)
      if content is not None and str(key).isdigit():
        out[int(key)] = content
  return out


def tokenizer_config_flag(directory: str | None, key: str, default: bool) -> bool:
  """A boolean setting of tokenizer_config.json (e.g. `clean_up_tokenization_spaces`)."""
  if directory is None:
    return default
  config = read_json(os.path.join(directory, 'tokenizer_config.json')) or {}
  value = config.get(key, default)
  return value if isinstance(value, bool) else default
