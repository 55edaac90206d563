"""deepalign against transformers-made views of tiny checkpoints in real layouts (no torch needed).

The fixtures under tests/fixtures/tokenizers/ and their transformers_view.json are written by
scripts/make_tokenizer_fixtures.py (transformers 5.x); see its docstring for what each one is.
"""

from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from deepalign.data import ChatTemplate, PipelineConfig, load_tokenizer, prompt_dataset
from deepalign.data import tokenizer_parity
from deepalign.data.tokenize_records import RecordTokenizer
from deepalign.study import text_judge

FIXTURES = os.path.join(os.path.dirname(__file__), '..', 'fixtures', 'tokenizers')
NAMES = ('qwen2_bpe', 'sp_inst', 'sp_inst_bare', 'guard_bos')


def _dir(name: str) -> str:
  return os.path.join(FIXTURES, name)


def _theirs(name: str) -> dict:
  with open(os.path.join(_dir(name), 'transformers_view.json'), encoding='utf-8') as f:
    return json.load(f)


@pytest.mark.parametrize('name', NAMES)
def test_every_check_matches_transformers(name: str) -> None:
  checks = tokenizer_parity.compare(tokenizer_parity.deepalign_view(_dir(name)), _theirs(name))
  assert len(checks) > 40
  failed = [c.line() for c in checks if not c.ok]
  assert not failed, '\n'.join(failed)


def test_qwen2_has_no_bos_and_its_chats_start_with_im_start() -> None:
  """config.json says bos_token_id = <|endoftext|>; tokenizer_config.json says bos_token null."""
  d = _dir('qwen2_bpe')
  with open(os.path.join(d, 'config.json'), encoding='utf-8') as f:
    assert json.load(f)['bos_token_id'] is not None
  tok, theirs = load_tokenizer(d), _theirs('qwen2_bpe')
  im_start, im_end, endoftext = (tok.token_to_id(t) for t in ('<|im_start|>', '<|im_end|>', '<|endoftext|>'))
  assert tok.bos_id is None and theirs['bos_token_id'] is None
  assert tok.eos_id == im_end and set(tok.eos_ids) == {im_end, endoftext}
  names = ('system', 'multi_turn', 'unicode', 'special_lookalike')
  convs = dict(tokenizer_parity.CONVERSATIONS)
  records = [{'prompt': json.dumps(list(convs[n])), 'category': 'x', 'target': ''} for n in names]
  batch = next(iter(prompt_dataset(records, tok, ChatTemplate.from_pretrained(d), PipelineConfig(
      global_batch_size=4, max_prompt_len=96, max_response_len=4, shuffle=False))))
  for name, row, mask in zip(names, batch['prompt_tokens'], batch['prompt_mask']):
    real = [int(t) for t in row[mask.astype(bool)]]
    assert real == theirs['conversations'][name]['ids'], name
    assert real[0] == im_start and endoftext not in real


def test_sentencepiece_inst_has_no_extra_space_piece_and_keeps_spaces_on_decode() -> None:
  d = _dir('sp_inst')
  tok, theirs = load_tokenizer(d), _theirs('sp_inst')
  space, inst = tok.token_to_id('\u2581'), tok.token_to_id('[INST]')
  ids = RecordTokenizer(tok, ChatTemplate.from_pretrained(d)).prompt(
      [{'role': 'user', 'content': 'Hi there!'}, {'role': 'assistant', 'content': "Hello. What's up?"},
       {'role': 'user', 'content': 'Tell me a joke, please.'}])
  assert ids == theirs['conversations']['multi_turn']['ids']
  assert ids[:2] == [tok.bos_id, inst] and ids[2] != space
  assert all(ids[i + 1] != space for i, t in enumerate(ids[:-1]) if t == inst)
  text = '[INST] What is it? [/INST] Tell me.'
  assert tok.decode(tok.encode(text)) == 'What is it?  Tell me.'  # the space after [/INST] survives
  entry = next(e for e in theirs['texts'] if e['text'] == text)
  assert tok.encode(text) == entry['ids'] and tok.decode(entry['ids']) == entry['decoded_skip']


def test_sentencepiece_without_tokenizer_config_renders_the_models_bos() -> None:
  d = _dir('sp_inst_bare')
  assert not os.path.exists(os.path.join(d, 'tokenizer_config.json'))
  template = ChatTemplate.from_pretrained(d)  # no tokenizer given: the directory's own
  text = template.render([{'role': 'user', 'content': 'Hi'}], add_generation_prompt=True)
  assert text == '<s>[INST] Hi [/INST]'
  assert _theirs('sp_inst_bare')['conversations']['empty']['text'] == '<s>[INST]  [/INST]'


def test_template_written_bos_is_never_added_again() -> None:
  """Llama-Guard-3's template starts ' <|begin_of_text|>': batches and judge rows hold one BOS."""
  d = _dir('guard_bos')
  tok, theirs = load_tokenizer(d), _theirs('guard_bos')
  template = ChatTemplate.from_pretrained(d)
  messages = [{'role': 'user', 'content': 'Is it safe?'}, {'role': 'assistant', 'content': "It's 'safe' , I think ."}]
  expected = theirs['conversations']['finished']['ids']
  assert expected[1] == tok.bos_id and expected.count(tok.bos_id) == 1
  prompt = RecordTokenizer(tok, template).prompt(messages[:1])
  assert prompt.count(tok.bos_id) == 1 and prompt[:2] == expected[:2]
  judge = text_judge.TextJudge(model=types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=512)),
                               params=None, tokenizer=tok, template=template, temperature=1.0,
                               answer_ids=None, source=d)
  tokens, mask, last = judge.encode(['Is it safe?'], ["It's 'safe' , I think ."])
  assert list(tokens[0, :last[0] + 1]) == expected
  # Decoding keeps the text (transformers 5 skips clean_up_tokenization_spaces for BPE).
  assert "It's 'safe' , I think ." in tok.decode(expected)
  assert "must read 'safe' or 'unsafe'" in tok.decode(expected)
  # The first Llama-3 release: eos <|end_of_text|>, generation_config.json stops at <|eot_id|> too.
  assert tok.eos_id == tok.token_to_id('<|end_of_text|>')
  assert set(tok.eos_ids) == set(theirs['stop_ids']) == {tok.eos_id, tok.token_to_id('<|eot_id|>')}
  # user_prompts cuts the template's frame, its BOS included, from a pipeline row.
  row = np.array([prompt], np.int32)
  assert text_judge.user_prompts(tok, template, row, np.ones_like(row)) == ['Is it safe?']


def test_clean_up_tokenization_spaces_only_where_transformers_applies_it(tmp_path) -> None:
  """transformers 5: applied to WordPiece (what it was written for), skipped for BPE unless forced."""
  import tokenizers
  from tokenizers import decoders, models, pre_tokenizers
  vocab = {'[UNK]': 0, 'hello': 1, ',': 2, 'world': 3, "'": 4, 's': 5}
  wordpiece = tokenizers.Tokenizer(models.WordPiece(vocab, unk_token='[UNK]'))
  wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  wordpiece.decoder = decoders.WordPiece()
  (tmp_path / 'wp').mkdir()
  wordpiece.save(str(tmp_path / 'wp' / 'tokenizer.json'))
  (tmp_path / 'wp' / 'tokenizer_config.json').write_text('{"clean_up_tokenization_spaces": true}')
  tok = load_tokenizer(str(tmp_path / 'wp'))
  assert tok.decode(tok.encode('hello, world')) == 'hello, world'  # 'hello , world' cleaned
  guard = _dir('guard_bos')
  for forced, expected in ((False, "read 'safe' ,"), (True, "read'safe',")):
    d = tmp_path / f'bpe_{forced}'
    d.mkdir()
    for name in ('tokenizer.json', 'tokenizer_config.json'):
      (d / name).write_bytes(open(os.path.join(guard, name), 'rb').read())
    config = json.loads((d / 'tokenizer_config.json').read_text())
    config['clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output'] = forced
    (d / 'tokenizer_config.json').write_text(json.dumps(config))
    bpe = load_tokenizer(str(d))
    assert bpe.decode(bpe.encode("read 'safe' , ok")).startswith(expected)
