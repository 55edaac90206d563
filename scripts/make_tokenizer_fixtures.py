"""Writes the transformers-made tokenizer fixtures under tests/fixtures/tokenizers/.

Needs transformers + tokenizers + sentencepiece (`pip install -e .[hf]`, or any venv with
them: only `deepalign/data/tokenizer_parity.py` and `deepalign/errors.py` are imported
from deepalign); the tests that read the fixtures need none of it. Each fixture is a tiny
checkpoint's tokenizer files in the layout a real release has, plus `transformers_view.json`:
what transformers (AutoTokenizer, apply_chat_template, decode, GenerationConfig) makes of
it on `tokenizer_parity.CONVERSATIONS` / `TEXTS`.

  qwen2_bpe/         Qwen2-style byte-level BPE (Qwen2Tokenizer's own pipeline), `bos_token: null`
                     in tokenizer_config.json while config.json says bos_token_id (item: no BOS).
  sp_inst/           a SentencePiece-only Mistral/Llama-2-style checkpoint: tokenizer.model with
                     [INST] / [/INST] control pieces, tokenizer_config.json (LlamaTokenizer,
                     legacy false), a Mistral-style template writing bos_token.
  sp_inst_bare/      the same tokenizer.model with no tokenizer_config.json, the template in
                     chat_template.jinja (bos_token comes from the model itself).
  guard_bos/         a Llama-3-style tokenizer.json (first Llama-3 release: eos <|end_of_text|>,
                     generation_config.json stops at both), clean_up_tokenization_spaces true,
                     and a Llama-Guard-3-style template that writes ' <|begin_of_text|>' itself.

Usage:  python scripts/make_tokenizer_fixtures.py [--out tests/fixtures/tokenizers]
Deterministic: the trainers run single-threaded on a fixed corpus.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import os
import pathlib
import shutil
import sys

import sentencepiece
import tokenizers
import transformers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

ROOT = pathlib.Path(__file__).resolve().parents[1]

CORPUS = [
    'the quick brown fox jumps over the lazy dog',
    'What is the weather today? Tell me more, please.',
    'sure here is how to bake bread: mix flour, water and salt',
    "I cannot help with that request. It's not safe, don't ask.",
    'héllo wörld, ça va? 日本語のテキスト 🙂',
    'You are a careful assistant. Hi there! Hello.',
    'Task: Check if there is unsafe content in the conversation.',
    'numbers 0123456789 and symbols !?.,;:',
] * 8

QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}")

# Llama-Guard-3's shape: the template writes ' <|begin_of_text|>' (with the space) itself.
GUARD_TEMPLATE = (
    "{% if messages|length % 2 == 0 %}{% set role = 'Agent' %}{% else %}{% set role = 'User' %}{% endif %}"
    "{{ \" <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nTask: Check if there is unsafe "
    "content in '\" + role + \"' messages in conversations.\\n\\n<BEGIN CONVERSATION>\\n\\n\" }}"
    "{% for message in messages %}{% set content = message['content'] %}"
    "{% if message['role'] == 'user' %}{% set role = 'User' %}{% elif message['role'] == 'assistant' %}"
    "{% set role = 'Agent' %}{% endif %}{{ role + ': ' + content.strip() + '\\n\\n' }}{% endfor %}"
    "{{ \"<END CONVERSATION>\\n\\nProvide your safety assessment for ONLY THE LAST \" + role + \" message:\\n"
    " - First line must read 'safe' or 'unsafe'.<|eot_id|><|start_header_id|>assistant<|end_header_id|>\\n\\n\" }}")


def _load_parity():
  """deepalign/data/tokenizer_parity.py without deepalign.data's package (which needs jax, grain)."""
  sys.path.insert(0, str(ROOT))
  spec = importlib.util.spec_from_file_location('tokenizer_parity', ROOT / 'deepalign/data/tokenizer_parity.py')
  module = importlib.util.module_from_spec(spec)
  sys.modules['tokenizer_parity'] = module  # dataclasses look their module up
  spec.loader.exec_module(module)
  return module


def _write_json(path: pathlib.Path, value: dict) -> None:
  path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')


def _added(tok: tokenizers.Tokenizer, names: list[str]) -> dict:
  return {str(tok.token_to_id(n)): {'content': n, 'lstrip': False, 'normalized': False, 'rstrip': False,
                                    'single_word': False, 'special': True} for n in names}


def qwen2_bpe(out: pathlib.Path) -> None:
  from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
  specials = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
  tok = tokenizers.Tokenizer(models.BPE())
  tok.normalizer = normalizers.NFC()
  tok.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Split(tokenizers.Regex(PRETOKENIZE_REGEX), behavior='isolated', invert=False),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=420, special_tokens=specials, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(out / 'tokenizer.json'))
  endoftext, im_end = tok.token_to_id('<|endoftext|>'), tok.token_to_id('<|im_end|>')
  _write_json(out / 'tokenizer_config.json', {
      'add_prefix_space': False, 'added_tokens_decoder': _added(tok, specials), 'bos_token': None,
      'chat_template': QWEN2_TEMPLATE, 'clean_up_tokenization_spaces': False, 'eos_token': '<|im_end|>',
      'errors': 'replace', 'model_max_length': 32768, 'pad_token': '<|endoftext|>', 'split_special_tokens': False,
      'tokenizer_class': 'Qwen2Tokenizer', 'unk_token': None})
  _write_json(out / 'config.json', {'model_type': 'qwen2', 'bos_token_id': endoftext, 'eos_token_id': im_end})
  _write_json(out / 'generation_config.json', {'bos_token_id': endoftext, 'eos_token_id': [im_end, endoftext],
                                               'pad_token_id': endoftext})


def _sp_model() -> bytes:
  buffer = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=buffer, vocab_size=420, model_type='bpe',
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=['[INST]', '[/INST]'], byte_fallback=True,
      character_coverage=1.0, normalization_rule_name='identity', add_dummy_prefix=True,
      remove_extra_whitespaces=False, split_digits=True, num_threads=1, minloglevel=2)
  return buffer.getvalue()


def sp_inst(out: pathlib.Path, model: bytes) -> None:
  (out / 'tokenizer.model').write_bytes(model)
  _write_json(out / 'tokenizer_config.json', {
      'add_bos_token': True, 'add_eos_token': False, 'bos_token': '<s>', 'chat_template': MISTRAL_TEMPLATE,
      'clean_up_tokenization_spaces': False, 'eos_token': '</s>', 'legacy': False, 'model_max_length': 32768,
      'pad_token': None, 'tokenizer_class': 'LlamaTokenizer', 'unk_token': '<unk>', 'use_default_system_prompt': False})
  _write_json(out / 'generation_config.json', {'bos_token_id': 1, 'eos_token_id': 2})


def sp_inst_bare(out: pathlib.Path, model: bytes) -> None:
  (out / 'tokenizer.model').write_bytes(model)
  (out / 'chat_template.jinja').write_text(MISTRAL_TEMPLATE, encoding='utf-8')


def guard_bos(out: pathlib.Path) -> None:
  specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>']
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
      vocab_size=420, special_tokens=specials, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  bos = tok.token_to_id('<|begin_of_text|>')
  # Llama 3's post-processor prepends BOS; apply_chat_template does not use it (add_special_tokens=False).
  tok.post_processor = processors.TemplateProcessing(single='<|begin_of_text|> $A',
                                                     special_tokens=[('<|begin_of_text|>', bos)])
  tok.save(str(out / 'tokenizer.json'))
  end, eot = tok.token_to_id('<|end_of_text|>'), tok.token_to_id('<|eot_id|>')
  _write_json(out / 'tokenizer_config.json', {
      'added_tokens_decoder': _added(tok, specials), 'bos_token': '<|begin_of_text|>',
      'chat_template': GUARD_TEMPLATE, 'clean_up_tokenization_spaces': True, 'eos_token': '<|end_of_text|>',
      'model_max_length': 131072, 'tokenizer_class': 'PreTrainedTokenizerFast'})
  _write_json(out / 'config.json', {'model_type': 'llama', 'bos_token_id': bos, 'eos_token_id': end})
  _write_json(out / 'generation_config.json', {'bos_token_id': bos, 'eos_token_id': [end, eot]})


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--out', default=str(ROOT / 'tests/fixtures/tokenizers'))
  args = parser.parse_args()
  parity = _load_parity()
  root = pathlib.Path(args.out)
  model = _sp_model()
  makers = {'qwen2_bpe': qwen2_bpe, 'sp_inst': lambda d: sp_inst(d, model),
            'sp_inst_bare': lambda d: sp_inst_bare(d, model), 'guard_bos': guard_bos}
  for name, make in makers.items():
    out = root / name
    if out.exists():
      shutil.rmtree(out)
    out.mkdir(parents=True)
    make(out)
    view = parity.transformers_view(str(out))
    _write_json(out / 'transformers_view.json', view)
    size = sum(p.stat().st_size for p in out.iterdir())
    print(f'{name}: {size // 1024} KiB, transformers {transformers.__version__}')


if __name__ == '__main__':
  os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
  main()
