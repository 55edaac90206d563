"""A SentencePiece `tokenizer.model` (Llama 2, Mistral, Gemma, T5 checkpoints without tokenizer.json).

transformers (5.x) never runs such a model as SentencePiece does: it converts it to
a `tokenizers` pipeline, and which pipeline depends on the checkpoint's files. We
run SentencePiece on exactly the text that pipeline hands its BPE/Unigram model:

  tokenizer_config.json names `LlamaTokenizer` (Llama 2, Mistral): no normalizer;
    spaces become `▁`; a `▁` is put before a stretch of text that does not start
    with one: only before the text's first stretch (`legacy: false`, the default),
    before every stretch between special tokens (`legacy: true`), or never
    (`add_prefix_space: false`). So `[INST] Hi` is `[INST]`, `▁Hi`.
  any other checkpoint (no tokenizer_config.json, other classes): the model's own
    normalizer spec, per stretch between special tokens: extra spaces removed if
    the model says so, spaces escaped, the dummy prefix `▁` put before every
    stretch as SentencePiece does (`legacy`, the default), or only before the
    first stretch if it does not start with `▁` (`legacy: false`).

Special tokens (control pieces such as <s>, [INST]; tokens tokenizer_config.json
adds past the model's pieces, `added_tokens_decoder`) are split out of the text
first; pieces the model declares user-defined (Gemma's <start_of_turn>)
SentencePiece matches itself. Decoding is transformers' decoder: pieces joined
with `▁` as a space, byte pieces (<0xE2>...) as UTF-8, then one leading space
removed where a prefix space is added, so the space after a control token
survives (`today? [/INST] Tell` -> `today? Tell`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence

import sentencepiece
from sentencepiece import sentencepiece_model_pb2

from deepalign.data import tokenizer_files
from deepalign.data.tokenizer_base import SplittingTokenizer
from deepalign.errors import UserError

_LLAMA_CLASSES = ('LlamaTokenizer', 'CodeLlamaTokenizer')
_SPACE = '\u2581'
_EXTRA_SPACES = re.compile(' {2,}')


def _byte_of(piece: str) -> int | None:
  """The byte a `<0xNN>` piece stands for (the decoders' ByteFallback), else None."""
  if len(piece) == 6 and piece.startswith('<0x') and piece.endswith('>'):
    try:
      return int(piece[3:5], 16)
    except ValueError:
      return None
  return None


class SentencePieceTokenizer(SplittingTokenizer):
  """`tokenizer.model` + the config files next to it."""

  def __init__(self, model_file: str) -> None:
    self.name = model_file
    try:
      with open(model_file, 'rb') as f:
        proto = sentencepiece_model_pb2.ModelProto.FromString(f.read())
      self._sp = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    except Exception as e:  # protobuf's DecodeError, OSError, SentencePiece's RuntimeError
      raise UserError(f'{model_file} is not a valid SentencePiece model ({e}); '
                      're-download it or point at the checkpoint directory') from e
    directory = os.path.dirname(os.path.abspath(model_file))
    config = tokenizer_files.read_json(os.path.join(directory, 'tokenizer_config.json')) or {}
    self._configure(proto, config)
    # The same model without its own prefix and space handling: _encode_ordinary does them.
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    if self._llama:  # LlamaTokenizer has no normalizer at all
      proto.normalizer_spec.name = 'identity'
      proto.normalizer_spec.precompiled_charsmap = b''
    self._raw = sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
    size = self._sp.GetPieceSize()
    self._added = {i: t for i, t in tokenizer_files.added_tokens(directory).items() if i >= size}
    self._added_ids = {t: i for i, t in self._added.items()}
    self._vocab_size = max([size] + [i + 1 for i in self._added])
    # transformers takes bos/eos/unk from the model when the files name none; pad only where the
    # tokenizer class has one by default (GemmaTokenizer's <pad>).
    defaults = {'bos_token': self._sp.bos_id(), 'eos_token': self._sp.eos_id(), 'unk_token': self._sp.unk_id(),
                'pad_token': self._sp.pad_id() if self._class.startswith('Gemma') else -1}
    # SentencePiece says -1 for "none".
    self._set_special_ids(directory, {k: (v if v >= 0 else None) for k, v in defaults.items()})

  def _configure(self, proto: sentencepiece_model_pb2.ModelProto, config: dict) -> None:
    """The prefix-space rules transformers' converted tokenizer applies (see the module docstring)."""
    spec = proto.normalizer_spec
    self._class = str(config.get('tokenizer_class') or '').removesuffix('Fast')
    self._llama = self._class in _LLAMA_CLASSES
    if self._llama:
      add_prefix_space = config.get('add_prefix_space')
      add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
      legacy = bool(config.get('legacy', False))
      self._prefix = 'never' if not add_prefix_space else ('always' if legacy else 'first')
      self._prefix_even_after_space = False  # Metaspace: no `▁` before text that starts with one
      self._collapse_spaces = False
      self._strip_decoded = add_prefix_space
    else:
      legacy = bool(config.get('legacy', True))
      self._prefix = 'never' if not spec.add_dummy_prefix else ('always' if legacy else 'first')
      self._prefix_even_after_space = legacy  # SentencePiece's dummy prefix is unconditional
      self._collapse_spaces = spec.remove_extra_whitespaces
      self._strip_decoded = spec.add_dummy_prefix

  @property
  def vocab_size(self) -> int:
    return self._vocab_size

  def token_to_id(self, token: str) -> int | None:
    if token in self._added_ids:
      return self._added_ids[token]
    token_id = self._sp.PieceToId(token)
    # PieceToId answers unk_id for unknown pieces; only the unk piece itself maps there.
    if token_id == self._sp.unk_id() and token != self._sp.IdToPiece(token_id):
      return None
    return token_id

  def id_to_token(self, token_id: int) -> str | None:
    if token_id in self._added:
      return self._added[token_id]
    if 0 <= token_id < self._sp.GetPieceSize():
      return self._sp.IdToPiece(token_id)
    return None

  def _split_tokens(self) -> dict[str, int]:
    tokens = dict(self._added_ids)
    for i in range(self._sp.GetPieceSize()):
      if self._sp.IsControl(i) or self._sp.IsUnknown(i):
        tokens[self._sp.IdToPiece(i)] = i
    for text in self.special_tokens.values():
      token_id = self.token_to_id(text)
      if token_id is not None:
        tokens[text] = token_id
    return tokens

  def _encode_ordinary(self, text: str, at_start: bool) -> list[int]:
    if self._collapse_spaces:
      text = _EXTRA_SPACES.sub(' ', text.strip(' '))
    if not text:
      return []
    pieces = text.replace(' ', _SPACE)
    prefix = self._prefix == 'always' or (self._prefix == 'first' and at_start)
    if prefix and (self._prefix_even_after_space or not pieces.startswith(_SPACE)):
      pieces = _SPACE + pieces
    return list(self._raw.EncodeAsIds(pieces))

  def _decode_ordinary(self, ids: Sequence[int]) -> str:
    return self.decode(ids, skip_special=False)

  def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
    """transformers' decoder: tokens with `▁` as a space, byte pieces as UTF-8, one leading space cut."""
    _, named = self._splitter()
    special = self.special_ids | frozenset(named.values())
    size = self._sp.GetPieceSize()
    out: list[str] = []
    pending = bytearray()
    pending_count = 0
    for token_id in (int(i) for i in ids):
      if token_id in special:
        if skip_special:
          continue
        token = self.id_to_token(token_id) or ''
      elif 0 <= token_id < size:
        token = self._sp.IdToPiece(token_id)
      else:
        continue  # an id past the tokenizer (a padded embedding row) decodes to nothing
      byte = _byte_of(token)
      if byte is not None and not (token_id in special):
        pending.append(byte)
        pending_count += 1
        continue
      if pending:
        out.append(_flush(pending, pending_count))
        pending, pending_count = bytearray(), 0
      out.append(token.replace(_SPACE, ' '))
    if pending:
      out.append(_flush(pending, pending_count))
    text = ''.join(out)
    if self._strip_decoded and text.startswith(' '):
      text = text[1:]
    return text


def _flush(data: bytearray, count: int) -> str:
  """Byte pieces as text; bytes that are not UTF-8 are one U+FFFD each, as in `tokenizers`."""
  try:
    return bytes(data).decode('utf-8')
  except UnicodeDecodeError:
    return '\ufffd' * count
