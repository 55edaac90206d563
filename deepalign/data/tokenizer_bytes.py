"""A byte-level tokenizer that needs no files: the test and toy tokenizer.

Ids: 0 = <pad>, 1 = <s> (bos), 2 = </s> (eos), then byte b is id b + 3 (vocab 259).
Any text round-trips (UTF-8); a byte sequence that is not valid UTF-8 decodes with
U+FFFD, as Hugging Face byte-level tokenizers do.
"""

from __future__ import annotations

from collections.abc import Sequence

from deepalign.data.tokenizer_base import SplittingTokenizer

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = 3
_SPECIALS = {'<pad>': PAD_ID, '<s>': BOS_ID, '</s>': EOS_ID}


class ByteTokenizer(SplittingTokenizer):
  """UTF-8 bytes as ids; `'<s>'`, `'</s>'`, `'<pad>'` written in text are the special ids."""

  def __init__(self) -> None:
    self.name = 'bytes'
    self.bos_id, self.eos_id, self.pad_id, self.unk_id = BOS_ID, EOS_ID, PAD_ID, None
    self.eos_ids = (EOS_ID,)
    self.special_tokens = {'bos_token': '<s>', 'eos_token': '</s>', 'pad_token': '<pad>'}

  @property
  def vocab_size(self) -> int:
    return 256 + BYTE_OFFSET

  def token_to_id(self, token: str) -> int | None:
    if token in _SPECIALS:
      return _SPECIALS[token]
    # SentencePiece's byte-fallback spelling, '<0x41>', names one byte.
    if len(token) == 6 and token.startswith('<0x') and token.endswith('>'):
      try:
        return int(token[3:5], 16) + BYTE_OFFSET
      except ValueError:
        return None
    return None

  def id_to_token(self, token_id: int) -> str | None:
    for text, i in _SPECIALS.items():
      if i == token_id:
        return text
    if BYTE_OFFSET <= token_id < self.vocab_size:
      return f'<0x{token_id - BYTE_OFFSET:02X}>'
    return None

  def _split_tokens(self) -> dict[str, int]:
    return dict(_SPECIALS)

  def _encode_ordinary(self, text: str, at_start: bool) -> list[int]:
    return [b + BYTE_OFFSET for b in text.encode('utf-8')]

  def _decode_ordinary(self, ids: Sequence[int]) -> str:
    # Ids outside the byte range (a model with a larger embedding can sample them) decode to nothing.
    data = bytes(i - BYTE_OFFSET for i in ids if BYTE_OFFSET <= i < self.vocab_size)
    return data.decode('utf-8', errors='replace')
