"""Records (CONTRACTS "Records") to token ids: prompt = the rendered chat, response = text + EOS.

The prompt is `template.render(turns before the answer, add_generation_prompt=True)`
encoded as is (templates write their own special tokens), with the tokenizer's
BOS put first if `add_bos` and the template did not write one (`with_bos`: a BOS
the template wrote, even after leading whitespace as Llama-Guard-3's
` <|begin_of_text|>`, is never added again). The response is the assistant text
encoded on its own, then EOS (an empty response is EOS alone). Records may come from a plain list
(str fields) or a TFDS `as_data_source` split (bytes fields); both are read here.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from deepalign.errors import UserError


class TokenizerLike(Protocol):
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None

  def encode(self, text: str) -> list[int]:
    ...


class ChatTemplateLike(Protocol):

  def render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    ...


def text_field(record: Mapping[str, Any], name: str, allow_empty: bool = False) -> str:
  """Field `name` as str (TFDS gives bytes); UserError naming it if missing or empty."""
  if name not in record:
    raise UserError(f"record field {name!r} is missing (record has {sorted(record)}): use a dataset of the "
                    "record kind this pipeline reads (CONTRACTS.md 'Records').")
  value = record[name]
  if isinstance(value, np.ndarray) and value.shape == ():
    value = value.item()
  if isinstance(value, (bytes, np.bytes_)):
    value = bytes(value).decode("utf-8")
  if not isinstance(value, str):
    raise UserError(f"record field {name!r} is a {type(value).__name__}, expected text.")
  if not allow_empty and not value.strip():
    raise UserError(f"record field {name!r} is empty: fix or filter the row.")
  return value


def flag_field(record: Mapping[str, Any], name: str, default: bool) -> bool:
  """A boolean field (bool / 0-d array / int), `default` if absent."""
  if name not in record:
    return default
  return bool(np.asarray(record[name]).item())


def parse_messages(text: str, field: str) -> list[dict[str, str]]:
  """A JSON list of {role, content}; plain text (not a JSON list) is one user turn."""
  stripped = text.lstrip()
  if not stripped.startswith("["):
    return [{"role": "user", "content": text}]
  try:
    messages = json.loads(text)
  except ValueError as e:
    raise UserError(f"record field {field!r} is not valid JSON messages ({e}): write "
                    '[{"role": ..., "content": ...}, ...].') from None
  if not isinstance(messages, list) or not all(
      isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
      for m in messages):
    raise UserError(f"record field {field!r} must be a JSON list of {{role, content}} strings.")
  return messages


def template_wrote_bos(tokenizer: Any, ids: Sequence[int]) -> bool:
  """Whether rendered-and-encoded `ids` hold the tokenizer's BOS before any text but whitespace."""
  bos = tokenizer.bos_id
  if bos is None or bos not in ids:
    return False
  head = list(ids[:list(ids).index(bos)])
  return not head or not tokenizer.decode(head, skip_special=False).strip()


def with_bos(tokenizer: Any, ids: Sequence[int]) -> list[int]:
  """`ids` with the tokenizer's BOS first, unless it has none or the template wrote it."""
  ids = list(ids)
  if tokenizer.bos_id is None or template_wrote_bos(tokenizer, ids):
    return ids
  return [tokenizer.bos_id] + ids


def bos_head(tokenizer: Any, ids: Sequence[int]) -> int:
  """How many leading prompt tokens a head cut keeps: up to and including a leading BOS, else 0."""
  if not template_wrote_bos(tokenizer, ids):
    return 0
  return list(ids).index(tokenizer.bos_id) + 1


@dataclasses.dataclass(frozen=True)
class RecordTokenizer:
  """Turns one record into token-id lists. Picklable, for grain worker processes."""
  tokenizer: Any  # TokenizerLike
  template: Any   # ChatTemplateLike
  add_bos: bool = True

  def __post_init__(self):
    if self.tokenizer.eos_id is None:
      raise UserError(f"tokenizer {self.tokenizer!r} has no eos token; responses need one to end: "
                      "use a tokenizer whose config names eos_token.")

  @property
  def pad_id(self) -> int:
    """Padding id: pad, or EOS for tokenizers without one (Llama); masks say which is which."""
    return self.tokenizer.pad_id if self.tokenizer.pad_id is not None else self.tokenizer.eos_id

  def keep_head(self, prompt: Sequence[int]) -> int:
    """Tokens of `prompt` a head cut keeps: everything up to its BOS (added or the template's)."""
    return bos_head(self.tokenizer, prompt)

  def prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
    ids = list(self.tokenizer.encode(self.template.render(list(messages), add_generation_prompt=True)))
    return with_bos(self.tokenizer, ids) if self.add_bos else ids

  def response(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text)) + [self.tokenizer.eos_id]

  def sft(self, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
    """`sft` record -> (prompt ids, response ids): the last turn is the assistant answer learned."""
    messages = parse_messages(text_field(record, "messages"), "messages")
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
      raise UserError("record field 'messages' must end with an assistant turn after at least one "
                      f"other turn (got roles {[m['role'] for m in messages]}).")
    return self.prompt(messages[:-1]), self.response(messages[-1]["content"])

  def preference(self, record: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
    """`preference` record -> (prompt ids, chosen ids, rejected ids)."""
    messages = parse_messages(text_field(record, "prompt"), "prompt")
    # An empty response is a valid (if poor) answer: HH-RLHF has such pairs (EOS alone).
    return (self.prompt(messages), self.response(text_field(record, "chosen", allow_empty=True)),
            self.response(text_field(record, "rejected", allow_empty=True)))

  def rl_prompt(self, record: Mapping[str, Any]) -> tuple[list[int], list[int], bool]:
    """`harmful_prompt` record -> (prompt ids, harmful response ids (no EOS), is_harmful).

    is_harmful: the record's `is_harmful` field, else category != "benign". The
    harmful response is the `target` text of harmful prompts (a prefill source,
    so no EOS), empty for benign ones.
    """
    messages = parse_messages(text_field(record, "prompt"), "prompt")
    category = text_field(record, "category", allow_empty=True) if "category" in record else ""
    harmful = flag_field(record, "is_harmful", category.strip().lower() != "benign")
    target = text_field(record, "target", allow_empty=True) if "target" in record else ""
    response = list(self.tokenizer.encode(target)) if harmful and target.strip() else []
    return self.prompt(messages), response, harmful
