"""Chat templates: a checkpoint's jinja2 template, rendered exactly as transformers renders it.

    tmpl = ChatTemplate.from_pretrained('/ckpt/llama3-instruct')
    text = tmpl.render([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True)
    ids = tok.encode(text)   # the template writes bos itself; don't add another

The environment matches `transformers.utils.chat_template_utils`: a sandboxed
(immutable) jinja2 environment with trim_blocks and lstrip_blocks, the
`loopcontrols` and `{% generation %}` extensions, a `tojson` filter that does not
escape HTML, and the globals `raise_exception`, `strftime_now`, `dict`,
`namespace`. The template sees `messages`, `add_generation_prompt`, `tools=None`,
`documents=None`, every special token of the checkpoint (`bos_token`,
`eos_token`, ...) and any extra keyword given to `render`.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from deepalign.data import tokenizer as tokenizer_lib
from deepalign.data import tokenizer_files
from deepalign.errors import UserError

_TEMPLATE_FILE = 'chat_template.jinja'          # transformers >= 4.43 writes the default template here
_TEMPLATE_DIR = 'additional_chat_templates'     # ... and named ones here, as NAME.jinja
_PROCESSOR_TEMPLATE_FILE = 'chat_template.json'  # legacy multimodal processors: {"chat_template": ...}


class _GenerationTracker(jinja2.ext.Extension):
  """`{% generation %}...{% endgeneration %}`: marks assistant text; records its character spans.

  Templates written for TRL's assistant-only loss use the tag; without the
  extension they would not even parse.
  """

  tags = {'generation'}

  def __init__(self, environment: jinja2.Environment) -> None:
    super().__init__(environment)
    self._spans: list[tuple[int, int]] | None = None
    self._blocks: list[str] | None = None

  def parse(self, parser: Any) -> jinja2.nodes.Node:
    lineno = next(parser.stream).lineno
    body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
    return jinja2.nodes.CallBlock(self.call_method('_mark', []), [], [], body).set_lineno(lineno)

  def _mark(self, caller: Any) -> str:
    text = caller()
    if self._spans is not None and self._blocks is not None:
      start = len(''.join(self._blocks))
      self._spans.append((start, start + len(text)))
    return text


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
  # jinja2's own tojson escapes <, >, & for HTML; chat templates want the raw JSON.
  return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
  raise jinja2.exceptions.TemplateError(message)


def _strftime_now(fmt: str) -> str:
  return datetime.datetime.now().strftime(fmt)


class _TemplateDict:
  """`dict(...)` for templates without exposing the type itself (no attribute tricks)."""

  def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)

  def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
  """jinja2's `namespace` minus underscore attributes (a sandbox escape route)."""

  def __init__(*args: Any, **kwargs: Any) -> None:  # pylint: disable=no-method-argument
    self, args = args[0], args[1:]
    attrs = dict(*args, **kwargs)
    for name in attrs:
      _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__init__(self, attrs)

  def __setitem__(self, name: str, value: Any) -> None:
    _TemplateNamespace._check_name(name)
    jinja2.utils.Namespace.__setitem__(self, name, value)

  @staticmethod
  def _check_name(name: Any) -> None:
    if isinstance(name, str) and name.startswith('_'):
      raise jinja2.exceptions.SecurityError(f'chat templates cannot set underscore attributes ({name!r})')


@functools.lru_cache(maxsize=64)
def _compile(source: str) -> jinja2.Template:
  """The compiled template (cached: a data pipeline renders the same template per row)."""
  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                     extensions=[_GenerationTracker, jinja2.ext.loopcontrols])
  env.filters['tojson'] = _tojson
  env.globals['raise_exception'] = _raise_exception
  env.globals['strftime_now'] = _strftime_now
  env.globals['dict'] = _TemplateDict()
  env.globals['namespace'] = _TemplateNamespace
  return env.from_string(source)


def _read_text(path: str) -> str:
  with open(path, encoding='utf-8') as f:
    return f.read()


def _templates_in(directory: str) -> dict[str, str]:
  """Every template a checkpoint directory holds, by name ('default' for the main one)."""
  templates: dict[str, str] = {}
  config = tokenizer_files.read_json(os.path.join(directory, 'tokenizer_config.json')) or {}
  value = config.get('chat_template')
  if isinstance(value, str):
    templates['default'] = value
  elif isinstance(value, list):  # [{"name": "default", "template": "..."}, {"name": "tool_use", ...}]
    for entry in value:
      if isinstance(entry, dict) and isinstance(entry.get('name'), str) and isinstance(entry.get('template'), str):
        templates[entry['name']] = entry['template']
  elif value is not None:
    raise UserError(f'{directory}/tokenizer_config.json: chat_template is a {type(value).__name__}; '
                    'it must be a string or a list of {"name", "template"} objects')
  if not templates:
    legacy = tokenizer_files.read_json(os.path.join(directory, _PROCESSOR_TEMPLATE_FILE)) or {}
    if isinstance(legacy.get('chat_template'), str):
      templates['default'] = legacy['chat_template']
  # Separate files win over the config's entries, as in transformers.
  if os.path.isfile(os.path.join(directory, _TEMPLATE_FILE)):
    templates['default'] = _read_text(os.path.join(directory, _TEMPLATE_FILE))
  extra_dir = os.path.join(directory, _TEMPLATE_DIR)
  if os.path.isdir(extra_dir):
    for name in sorted(os.listdir(extra_dir)):
      if name.endswith('.jinja'):
        templates[name[:-len('.jinja')]] = _read_text(os.path.join(extra_dir, name))
  return templates


def has_chat_template(directory: str | os.PathLike[str]) -> bool:
  """Whether checkpoint `directory` holds a chat template (config entry or .jinja file)."""
  return os.path.isdir(os.fspath(directory)) and bool(_templates_in(os.fspath(directory)))


def _plain(value: Any) -> Any:
  """A copy of `value` built from JSON types only, so the template cannot reach user objects' methods."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, str):
    return str.__str__(value)
  if isinstance(value, int):
    return int.__int__(value)
  if isinstance(value, float):
    return float.__float__(value)
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if hasattr(value, 'item') and callable(value.item):  # numpy scalars
    return _plain(value.item())
  return str(value)


class ChatTemplate:
  """A checkpoint's chat template with the special-token variables it is rendered with."""

  def __init__(self, source: str, special_tokens: Mapping[str, str] | None = None, name: str = '<string>') -> None:
    """`source`: the jinja2 text; `special_tokens`: `{'bos_token': '<s>', ...}`; `name`: for errors."""
    self.source = source
    self.special_tokens = dict(special_tokens or {})
    self.name = name
    try:
      self._template = _compile(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise UserError(f'chat template {name} does not parse (line {e.lineno}: {e.message}); '
                      'fix the template or use the one that ships with the checkpoint') from e

  @classmethod
  def from_pretrained(cls, directory: str | os.PathLike[str], name: str | None = None,
                      tokenizer: Any = None) -> ChatTemplate:
    """The template of a Hugging Face checkpoint directory.

    Args:
      directory: holds tokenizer_config.json (`chat_template`: a string or a list of
        named templates) and/or chat_template.jinja / additional_chat_templates/*.jinja.
      name: which named template ('tool_use', ...); default: 'default'.
      tokenizer: the loaded tokenizer, else the directory's own (if it has tokenizer
        files); its `special_tokens` fill the variables the config files do not name:
        a SentencePiece-only checkpoint's `bos_token` is the model's <s>, as in transformers.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
      raise UserError(f'chat template directory {directory} does not exist; pass the checkpoint directory')
    templates = _templates_in(directory)
    if not templates:
      raise UserError(
          f'{directory} has no chat template (no chat_template in tokenizer_config.json, no chat_template.jinja); '
          'use an instruction-tuned checkpoint, or write the template to chat_template.jinja in that directory')
    key = name or 'default'
    if key not in templates:
      raise UserError(f'{directory} has no chat template named {key!r} (it has {sorted(templates)}); '
                      'pass one of those names')
    if tokenizer is None:
      if tokenizer_lib.has_tokenizer(directory):
        tokenizer = tokenizer_lib.load_tokenizer(directory)
    specials = dict(getattr(tokenizer, 'special_tokens', None) or {})
    specials.update(tokenizer_files.special_token_strings(directory))
    return cls(templates[key], specials, name=f'{directory}:{key}')

  def render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
             **kwargs: Any) -> str:
    """The conversation as the model's text (special tokens written out).

    Args:
      messages: `[{'role': 'user', 'content': '...'}, ...]`; keys whose value is
        None are dropped (as transformers does: templates test `is defined`).
      add_generation_prompt: end with the header that opens an assistant turn.
      **kwargs: extra template variables (`tools`, `documents`, `date_string`, ...);
        they override the special tokens of the same name.
    """
    return self._render(messages, add_generation_prompt, kwargs, spans=None)

  def render_with_spans(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False,
                        **kwargs: Any) -> tuple[str, list[tuple[int, int]]]:
    """`render` plus the `[start, end)` character spans inside `{% generation %}` blocks.

    Only templates with the generation tag mark spans; others return `[]`.
    """
    spans: list[tuple[int, int]] = []
    return self._render(messages, add_generation_prompt, kwargs, spans=spans), spans

  def _render(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool,
              kwargs: dict[str, Any], spans: list[tuple[int, int]] | None) -> str:
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
      raise UserError(f'chat template {self.name}: messages must be a non-empty list of '
                      f'{{"role", "content"}} dicts, got {type(messages).__name__}')
    for message in messages:
      if not isinstance(message, Mapping):
        raise UserError(f'chat template {self.name}: each message must be a dict with "role" and "content", '
                        f'got {message!r}')
    chat = [{k: v for k, v in _plain(m).items() if v is not None} for m in messages]
    variables = {'tools': None, 'documents': None, **self.special_tokens, **_plain(kwargs)}
    variables.update(messages=chat, add_generation_prompt=bool(add_generation_prompt))
    try:
      if spans is None:
        return self._template.render(**variables)
      tracker = next(e for e in self._template.environment.extensions.values()
                     if isinstance(e, _GenerationTracker))
      blocks: list[str] = []
      tracker._spans, tracker._blocks = spans, blocks  # pylint: disable=protected-access
      try:
        # Rendering stream-wise lets the tracker see how much text precedes each block.
        for chunk in self._template.generate(**variables):
          blocks.append(chunk)
      finally:
        tracker._spans, tracker._blocks = None, None  # pylint: disable=protected-access
      return ''.join(blocks)
    except jinja2.exceptions.TemplateError as e:
      # raise_exception in a template means the conversation breaks the model's format.
      raise UserError(f'chat template {self.name} rejected the conversation: {e}; '
                      'fix the messages (roles/order) to fit this model') from e
