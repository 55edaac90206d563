"""deepalign's tokenizer and chat template of a checkpoint against transformers', on fixed inputs.

    ours = deepalign_view('/ckpt/Mistral-7B-Instruct-v0.3')
    theirs = transformers_view('/ckpt/Mistral-7B-Instruct-v0.3')   # needs `pip install -e .[hf]`
    for check in compare(ours, theirs): print(check.line())

A view is plain JSON: the special ids, the stop ids, and for each of `CONVERSATIONS`
the rendered template, its ids and their decodings (with and without special
tokens), and for each of `TEXTS` its ids and decodings. `scripts/check_tokenizer_parity.py`
prints the checks for your checkpoint; the tests compare committed transformers views
(`tests/fixtures/tokenizers/*/transformers_view.json`, written by
`scripts/make_tokenizer_fixtures.py`) with deepalign's.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from deepalign.errors import UserError

# Each exercises something a release got wrong once: a system message, several turns,
# non-ASCII text, an empty message, user text that spells special tokens, a finished
# conversation (SFT) rendered without a generation prompt.
CONVERSATIONS: tuple[tuple[str, tuple[dict[str, str], ...]], ...] = (
    ('system', ({'role': 'system', 'content': 'You are a careful assistant.'},
                {'role': 'user', 'content': 'What is the weather today?'})),
    ('multi_turn', ({'role': 'user', 'content': 'Hi there!'},
                    {'role': 'assistant', 'content': "Hello. What's up?"},
                    {'role': 'user', 'content': 'Tell me a joke, please.'})),
    ('unicode', ({'role': 'user', 'content': 'héllo wörld, ça va? 日本語のテキスト 🙂👍🏽'},)),
    ('empty', ({'role': 'user', 'content': ''},)),
    ('special_lookalike', ({'role': 'user', 'content': 'Say <s> and </s> or [INST] and <|im_end|> <|eot_id|> now'},)),
    ('finished', ({'role': 'user', 'content': 'Is it safe?'},
                  {'role': 'assistant', 'content': "It's 'safe' , I think ."})),
)

TEXTS: tuple[str, ...] = (
    'What is the weather today? Tell me more.',
    ' leading space', '  two  spaces  ', 'tabs\tand\nnewlines\r\n',
    "must read 'safe' or 'unsafe' , don't you ?",
    'héllo wörld 日本語 🙂👍🏽',
    '[INST] What is it? [/INST] Tell me.',
    '<s>[INST]What[/INST]x</s>',
    '<|im_start|>user\nhi<|im_end|>\n',
    '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>',
)


def _text_entry(ids: list[int], decoded: str, decoded_skip: str) -> dict[str, Any]:
  return {'ids': [int(i) for i in ids], 'decoded': decoded, 'decoded_skip': decoded_skip}


def deepalign_view(directory: str) -> dict[str, Any]:
  """What deepalign makes of checkpoint `directory` (tokenizer files + template) on the fixed inputs."""
  from deepalign.data import chat_template
  from deepalign.data.tokenize_records import RecordTokenizer
  from deepalign.data.tokenizer import load_tokenizer
  tok = load_tokenizer(directory)
  template = (chat_template.ChatTemplate.from_pretrained(directory, tokenizer=tok)
              if chat_template.has_chat_template(directory) else None)
  view: dict[str, Any] = {
      'bos_token_id': tok.bos_id, 'eos_token_id': tok.eos_id, 'pad_token_id': tok.pad_id,
      'stop_ids': sorted(set(tok.eos_ids)), 'conversations': {}, 'pipeline_prompts': {},
      'texts': [dict(text=t, **_text_entry(tok.encode(t), tok.decode(tok.encode(t), skip_special=False),
                                           tok.decode(tok.encode(t)))) for t in TEXTS],
  }
  if template is None:
    return view
  records = RecordTokenizer(tok, template) if tok.eos_id is not None else None
  for name, messages in CONVERSATIONS:
    generation_prompt = messages[-1]['role'] != 'assistant'
    try:
      text = template.render(list(messages), add_generation_prompt=generation_prompt)
    except UserError:
      view['conversations'][name] = {'error': True}
      continue
    ids = tok.encode(text)
    view['conversations'][name] = dict(text=text, **_text_entry(ids, tok.decode(ids, skip_special=False),
                                                                tok.decode(ids)))
    if records is not None and generation_prompt:
      view['pipeline_prompts'][name] = records.prompt(list(messages))
  return view


def transformers_view(directory: str) -> dict[str, Any]:
  """What transformers makes of `directory`: AutoTokenizer, apply_chat_template, decode, GenerationConfig."""
  try:
    import transformers
  except ImportError as e:
    raise UserError('the transformers side of the parity check needs transformers: pip install -e .[hf]') from e
  tok = transformers.AutoTokenizer.from_pretrained(directory)
  stops = {tok.eos_token_id} if tok.eos_token_id is not None else set()
  if os.path.isfile(os.path.join(directory, 'generation_config.json')):
    eos = transformers.GenerationConfig.from_pretrained(directory).eos_token_id
  else:
    eos = _json_or_empty(os.path.join(directory, 'config.json')).get('eos_token_id')
  stops.update([eos] if isinstance(eos, int) else list(eos or []))
  view: dict[str, Any] = {
      'bos_token_id': tok.bos_token_id, 'eos_token_id': tok.eos_token_id, 'pad_token_id': tok.pad_token_id,
      'stop_ids': sorted(stops), 'conversations': {}, 'transformers_version': transformers.__version__,
      'texts': [],
  }
  for text in TEXTS:
    ids = tok.encode(text, add_special_tokens=False)
    view['texts'].append(dict(text=text, **_text_entry(ids, tok.decode(ids), tok.decode(ids, skip_special_tokens=True))))
  if not getattr(tok, 'chat_template', None):
    return view
  for name, messages in CONVERSATIONS:
    generation_prompt = messages[-1]['role'] != 'assistant'
    try:
      text = tok.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt)
      ids = tok.apply_chat_template(list(messages), tokenize=True, add_generation_prompt=generation_prompt,
                                    return_dict=False)
    except Exception:  # jinja2's TemplateError from raise_exception: the template rejects the conversation
      view['conversations'][name] = {'error': True}
      continue
    if isinstance(ids, dict) or hasattr(ids, 'keys'):
      ids = ids['input_ids']
    ids = [int(i) for i in ids]
    view['conversations'][name] = dict(text=text, **_text_entry(ids, tok.decode(ids),
                                                                tok.decode(ids, skip_special_tokens=True)))
  return view


def _json_or_empty(path: str) -> dict[str, Any]:
  # Plain json, not tokenizer_files: this side runs where only transformers is installed (fixtures).
  if not os.path.isfile(path):
    return {}
  with open(path, encoding='utf-8') as f:
    return json.load(f)


@dataclasses.dataclass(frozen=True)
class Check:
  """One compared quantity: `name`, whether deepalign agrees, and what differs."""
  name: str
  ok: bool
  detail: str = ''

  def line(self) -> str:
    return f"{'ok  ' if self.ok else 'FAIL'} {self.name}" + (f': {self.detail}' if self.detail else '')


def _first_difference(ours: Any, theirs: Any) -> str:
  if isinstance(ours, list) and isinstance(theirs, list):
    for i, (a, b) in enumerate(zip(ours, theirs)):
      if a != b:
        return f'first difference at {i}: deepalign {ours[max(0, i - 2):i + 3]} vs transformers {theirs[max(0, i - 2):i + 3]}'
    return f'lengths {len(ours)} vs {len(theirs)}'
  return f'deepalign {ours!r} vs transformers {theirs!r}'


def compare(ours: dict[str, Any], theirs: dict[str, Any]) -> list[Check]:
  """Every check of `ours` (deepalign_view) against `theirs` (transformers_view)."""
  checks = []

  def check(name: str, a: Any, b: Any) -> None:
    checks.append(Check(name, a == b, '' if a == b else _first_difference(a, b)))

  for key in ('bos_token_id', 'eos_token_id', 'pad_token_id', 'stop_ids'):
    check(key, ours[key], theirs[key])
  for i, (a, b) in enumerate(zip(ours['texts'], theirs['texts'])):
    for key in ('ids', 'decoded', 'decoded_skip'):
      check(f'text {i} {key} {a["text"][:24]!r}', a[key], b[key])
  names = sorted(set(ours['conversations']) | set(theirs['conversations']))
  for name in names:
    a, b = ours['conversations'].get(name), theirs['conversations'].get(name)
    if a is None or b is None or a.get('error') or b.get('error'):
      check(f'chat {name} accepted', a is not None and not a.get('error'), b is not None and not b.get('error'))
      continue
    for key in ('text', 'ids', 'decoded', 'decoded_skip'):
      check(f'chat {name} {key}', a[key], b[key])
    prompt = ours.get('pipeline_prompts', {}).get(name)
    if prompt is not None:
      if prompt == b['ids']:
        checks.append(Check(f'chat {name} pipeline prompt', True))
      elif prompt[1:] == b['ids'] and prompt[0] == ours['bos_token_id'] and prompt[0] not in b['ids']:
        checks.append(Check(f'chat {name} pipeline prompt', True,
                            'note: the template writes no BOS; the pipeline adds one (add_bos=True), '
                            'apply_chat_template does not (set add_bos=False to match it)'))
      else:
        check(f'chat {name} pipeline prompt', prompt, b['ids'])
  return checks
