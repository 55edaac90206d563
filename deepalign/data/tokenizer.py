"""Loading a tokenizer from a checkpoint, and checking it against the model it feeds.

    tok = load_tokenizer('/ckpt/llama3')  # tokenizer.json (preferred) or tokenizer.model
    tok = load_tokenizer('bytes')         # the byte-level tokenizer of the tests
    ids = tok.encode('Hello', add_bos=True); tok.decode(ids)
    check_vocab_fits(tok, model_cfg)

Like `transformers.AutoTokenizer`, a directory with both files loads the fast
`tokenizer.json`; special ids come from tokenizer_config.json /
special_tokens_map.json, then generation_config.json / config.json.
"""

from __future__ import annotations

import os
from typing import Any

from deepalign.data.tokenizer_base import Tokenizer
from deepalign.data.tokenizer_bytes import ByteTokenizer
from deepalign.data.tokenizer_hf import HFTokenizer
from deepalign.data.tokenizer_sentencepiece import SentencePieceTokenizer
from deepalign.errors import UserError

__all__ = ['Tokenizer', 'load_tokenizer', 'check_vocab_fits']

# In the order transformers prefers them (T5 calls its SentencePiece model spiece.model).
_HF_FILES = ('tokenizer.json',)
_SP_FILES = ('tokenizer.model', 'spiece.model')


def has_tokenizer(directory: str | os.PathLike[str]) -> bool:
  """Whether checkpoint `directory` holds tokenizer files `load_tokenizer` reads."""
  directory = os.path.expanduser(os.fspath(directory))
  return any(os.path.isfile(os.path.join(directory, n)) for n in _HF_FILES + _SP_FILES)


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
  """The tokenizer at `path`: a checkpoint directory, a tokenizer.json / *.model file, or 'bytes'."""
  path = os.fspath(path)
  if path == 'bytes':
    return ByteTokenizer()
  expanded = os.path.expanduser(path)
  if os.path.isfile(expanded):
    if expanded.endswith('.json'):
      return HFTokenizer(expanded)
    if expanded.endswith('.model'):
      return SentencePieceTokenizer(expanded)
    raise UserError(f'tokenizer path {path} is neither a tokenizer.json nor a SentencePiece .model file; '
                    'pass the checkpoint directory or one of those files')
  if not os.path.isdir(expanded):
    raise UserError(f"tokenizer path {path} does not exist; pass a checkpoint directory, a tokenizer file, or 'bytes'")
  for name in _HF_FILES:
    if os.path.isfile(os.path.join(expanded, name)):
      return HFTokenizer(os.path.join(expanded, name))
  for name in _SP_FILES:
    if os.path.isfile(os.path.join(expanded, name)):
      return SentencePieceTokenizer(os.path.join(expanded, name))
  raise UserError(f'no tokenizer in {path}: expected one of {", ".join(_HF_FILES + _SP_FILES)}; '
                  'download the tokenizer files with the checkpoint')


def check_vocab_fits(tokenizer: Tokenizer, model_cfg: Any) -> None:
  """UserError if `tokenizer` can produce an id the model's embedding has no row for.

  `model_cfg` is anything with a `vocab_size` (a `models.ModelConfig`). A model
  vocabulary larger than the tokenizer's is fine (checkpoints pad it to a multiple
  of 64 or 128).
  """
  model_vocab = getattr(model_cfg, 'vocab_size', None)
  if not isinstance(model_vocab, int):
    raise UserError(f'model config {type(model_cfg).__name__} has no integer vocab_size; '
                    'pass the ModelConfig of the model the tokenizer feeds')
  if tokenizer.vocab_size > model_vocab:
    raise UserError(
        f'tokenizer {tokenizer.name} produces ids up to {tokenizer.vocab_size - 1} (vocab_size '
        f'{tokenizer.vocab_size}) but the model has vocab_size {model_vocab}; '
        "use the tokenizer that ships with the checkpoint, or a model whose vocab_size is at least the tokenizer's")
