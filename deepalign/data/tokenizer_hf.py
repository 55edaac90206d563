"""A Hugging Face `tokenizer.json` (the "fast" tokenizer), run by the `tokenizers` library.

Encoding never applies the file's post-processor (the template that prepends
<|begin_of_text|> for Llama 3): the caller asks for bos with `add_bos`, and a
chat template writes its own, so a rendered chat never gets two.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import tokenizers

from deepalign.data import tokenizer_files
from deepalign.data.tokenizer_base import Tokenizer
from deepalign.errors import UserError


def _clean_up_tokenization(text: str) -> str:
  """transformers' `clean_up_tokenization` (applied when tokenizer_config.json asks for it)."""
  return (text.replace(' .', '.').replace(' ?', '?').replace(' !', '!').replace(' ,', ',')
          .replace(" ' ", "'").replace(" n't", "n't").replace(" 'm", "'m").replace(" 's", "'s")
          .replace(" 've", "'ve").replace(" 're", "'re"))


def _applies_clean_up(tok: tokenizers.Tokenizer, directory: str) -> bool:
  """Whether transformers (5.x) cleans up decoded text for this tokenizer.

  `clean_up_tokenization_spaces: true` (Llama 3's tokenizer_config.json says so) is
  ignored for BPE models: the clean-up was written for WordPiece and corrupts BPE
  text (`must read 'safe'` -> `must read'safe'`), unless the config also sets
  `clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output`.
  """
  if not tokenizer_files.tokenizer_config_flag(directory, 'clean_up_tokenization_spaces', False):
    return False
  if type(tok.model).__name__ != 'BPE':
    return True
  return tokenizer_files.tokenizer_config_flag(
      directory, 'clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output', False)


class HFTokenizer(Tokenizer):
  """`tokenizer.json` + the config files next to it."""

  def __init__(self, tokenizer_file: str) -> None:
    self.name = tokenizer_file
    try:
      self._tok = tokenizers.Tokenizer.from_file(tokenizer_file)
    except Exception as e:  # the Rust library raises bare Exceptions for malformed files
      raise UserError(f'{tokenizer_file} is not a valid Hugging Face tokenizer.json ({e}); '
                      're-download it or point at the checkpoint directory') from e
    directory = os.path.dirname(os.path.abspath(tokenizer_file))
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self._vocab_size = max(vocab.values()) + 1 if vocab else 0
    self._clean_up = _applies_clean_up(self._tok, directory)
    self._set_special_ids(directory, defaults={})

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  def token_to_id(self, token: str) -> int | None:
    return self._tok.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self._tok.id_to_token(token_id)

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    if not isinstance(text, str):
      raise UserError(f'{self.name}: encode takes a str, got {type(text).__name__}; pass the text itself')
    ids = self._tok.encode(text, add_special_tokens=False).ids
    if add_bos:
      if self.bos_id is None:
        raise UserError(f'{self.name} has no bos token; call encode(text, add_bos=False)')
      ids = [self.bos_id] + ids
    return ids

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    ids = [int(i) for i in ids]
    if skip_special:
      # The library skips only tokens it marks special; bos/eos/pad named in the configs also go.
      drop = self.special_ids
      ids = [i for i in ids if i not in drop]
    text = self._tok.decode(ids, skip_special_tokens=skip_special)
    return _clean_up_tokenization(text) if self._clean_up else text
