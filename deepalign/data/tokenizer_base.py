"""The tokenizer interface every backend (bytes, tokenizer.json, SentencePiece) implements.

Special tokens written as text (`'<|eot_id|>'` in a rendered chat template) are
encoded as their single id, as Hugging Face tokenizers do, so that
`encode(template.render(messages))` gives the ids a transformers user gets with
`apply_chat_template(..., tokenize=True)`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Sequence

from deepalign.data import tokenizer_files
from deepalign.errors import UserError


class Tokenizer(abc.ABC):
  """Text <-> token ids. Backends set the attributes in `__init__` via `_set_special_ids`.

  Attributes:
    name: what was loaded (a path, or 'bytes'), for error messages.
    bos_id, eos_id, pad_id, unk_id: special ids, or None when the tokenizer has none.
    eos_ids: every id that ends a response (eos_id first, then the extra stop ids
      of generation_config.json, e.g. Llama-3-Instruct's <|eot_id|>).
    special_tokens: attribute name -> token text (`{'bos_token': '<s>', ...}`),
      the variables a chat template sees.
  """

  name: str
  bos_id: int | None = None
  eos_id: int | None = None
  pad_id: int | None = None
  unk_id: int | None = None
  eos_ids: tuple[int, ...] = ()
  special_tokens: dict[str, str]

  @property
  @abc.abstractmethod
  def vocab_size(self) -> int:
    """1 + the largest id `encode` can return: the smallest embedding that fits."""

  @abc.abstractmethod
  def token_to_id(self, token: str) -> int | None:
    """The id of one vocabulary entry (e.g. `'<|eot_id|>'`), or None if it has none."""

  @abc.abstractmethod
  def id_to_token(self, token_id: int) -> str | None:
    """The vocabulary entry of an id, or None if out of range."""

  @abc.abstractmethod
  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    """Ids of `text`; special tokens written in the text map to their ids."""

  @abc.abstractmethod
  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    """Text of `ids` (a list or a 1-D array); special tokens dropped when `skip_special`."""

  @property
  def special_ids(self) -> frozenset[int]:
    """Ids that `decode(..., skip_special=True)` drops."""
    ids = {self.bos_id, self.eos_id, self.pad_id, self.unk_id, *self.eos_ids}
    for text in self.special_tokens.values():
      ids.add(self.token_to_id(text))
    ids.discard(None)
    return frozenset(ids)  # type: ignore[arg-type]

  def _set_special_ids(self, directory: str | None, defaults: dict[str, int | None]) -> None:
    """Resolves bos/eos/pad/unk as transformers does: the tokenizer files, else the backend's `defaults`.

    A name the files set to null has no token. The model configs
    (generation_config.json, config.json) never name bos, pad or unk (their
    `bos_token_id` is the model's, not the tokenizer's); they give the stop ids
    (`eos_ids`, as `generate` stops at generation_config.json's `eos_token_id`)
    and an eos the tokenizer files lack.
    """
    self.special_tokens = tokenizer_files.special_token_strings(directory)
    declared = tokenizer_files.declared_special_tokens(directory)
    config_ids = tokenizer_files.model_config_token_ids(directory)
    resolved: dict[str, int | None] = {}
    for attr in ('bos_token', 'eos_token', 'pad_token', 'unk_token'):
      text = self.special_tokens.get(attr)
      if text is not None:
        token_id = self.token_to_id(text)
        if token_id is None:
          raise UserError(
              f'{self.name}: the tokenizer config names {attr} {text!r}, which is not in the vocabulary; '
              f'fix {attr} in tokenizer_config.json / special_tokens_map.json or use the matching tokenizer files')
        resolved[attr] = token_id
      elif attr in declared:
        resolved[attr] = None
      elif defaults.get(attr) is not None:
        resolved[attr] = defaults[attr]
      else:
        resolved[attr] = None
    if resolved['eos_token'] is None and config_ids.get('eos_token'):
      resolved['eos_token'] = config_ids['eos_token'][0]  # responses need an end: the model's eos
    for attr, token_id in resolved.items():
      # Ids known only from the backend or the model configs still need their text for templates.
      if token_id is not None and attr not in self.special_tokens:
        text = self.id_to_token(token_id)
        if text is not None:
          self.special_tokens[attr] = text
    self.bos_id, self.eos_id = resolved['bos_token'], resolved['eos_token']
    self.pad_id, self.unk_id = resolved['pad_token'], resolved['unk_token']
    stops = [self.eos_id] + config_ids.get('eos_token', [])
    self.eos_ids = tuple(dict.fromkeys(i for i in stops if i is not None))

  def __repr__(self) -> str:
    return (f'{type(self).__name__}({self.name!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, '
            f'eos_id={self.eos_id}, pad_id={self.pad_id})')


class SplittingTokenizer(Tokenizer):
  """A backend that cannot itself find special tokens in text: splits on them, encodes the rest.

  Subclasses provide `_encode_ordinary` / `_decode_ordinary` for text without
  special tokens and `_split_tokens()`: token text -> id for every token that
  text may name (transformers' added and special tokens).
  """

  @abc.abstractmethod
  def _encode_ordinary(self, text: str, at_start: bool) -> list[int]:
    """Ids of a stretch of text without special tokens; `at_start`: it begins the whole text."""

  @abc.abstractmethod
  def _decode_ordinary(self, ids: Sequence[int]) -> str:
    ...

  @abc.abstractmethod
  def _split_tokens(self) -> dict[str, int]:
    ...

  def _splitter(self) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    if getattr(self, '_splitter_cache', None) is None:
      tokens = {t: i for t, i in self._split_tokens().items() if t}
      # Longest first, so '<|eot_id|>' wins over a shorter token that is its prefix.
      alternatives = sorted(tokens, key=len, reverse=True)
      pattern = re.compile('|'.join(re.escape(t) for t in alternatives)) if alternatives else None
      self._splitter_cache = (pattern, tokens)
    return self._splitter_cache

  def encode(self, text: str, add_bos: bool = False) -> list[int]:
    if not isinstance(text, str):
      raise UserError(f'{self.name}: encode takes a str, got {type(text).__name__}; pass the text itself')
    ids: list[int] = []
    if add_bos:
      if self.bos_id is None:
        raise UserError(f'{self.name} has no bos token; call encode(text, add_bos=False)')
      ids.append(self.bos_id)
    pattern, tokens = self._splitter()
    start = 0
    if pattern is not None:
      for match in pattern.finditer(text):
        if match.start() > start:
          ids.extend(self._encode_ordinary(text[start:match.start()], start == 0))
        ids.append(tokens[match.group()])
        start = match.end()
    if start < len(text):
      ids.extend(self._encode_ordinary(text[start:], start == 0))
    return ids

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    _, tokens = self._splitter()
    named = {i: t for t, i in tokens.items()}
    special = self.special_ids | frozenset(named)
    pieces: list[str] = []
    run: list[int] = []
    for token_id in (int(i) for i in ids):
      if token_id in special:
        if run:
          pieces.append(self._decode_ordinary(run))
          run = []
        if not skip_special:
          pieces.append(named.get(token_id) or self.id_to_token(token_id) or '')
      else:
        run.append(token_id)
    if run:
      pieces.append(self._decode_ordinary(run))
    return ''.join(pieces)
