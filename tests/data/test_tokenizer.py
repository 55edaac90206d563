"""Tokenizers: bytes, a tiny BPE tokenizer.json, a tiny SentencePiece model; special ids; vocab checks."""

from __future__ import annotations

import dataclasses
import io
import json
import os

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest
import sentencepiece
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from deepalign.data.tokenizer import check_vocab_fits, load_tokenizer
from deepalign.errors import UserError

CORPUS = [
    'the quick brown fox jumps over the lazy dog',
    'sure here is how to bake bread: mix flour, water and salt',
    'I cannot help with that request.',
    'héllo wörld, ça va? 日本語のテキスト 🙂',
    'numbers 0123456789 and symbols !?.,;:',
] * 4

UNICODE_SAMPLES = ['héllo wörld', '日本語のテキスト', 'emoji 🙂👍🏽 mixed ascii', '  leading and trailing  ',
                   'tabs\tand\nnewlines\r\n', 'ümlaut ß ø å', '']


def _write_json(path: str, value: dict) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(value, f)


def make_bpe_dir(directory: str, config: dict | None = None, vocab_size: int = 300) -> str:
  """A byte-level BPE tokenizer.json trained on CORPUS, with Llama-3-like special tokens."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  specials = ['<|begin_of_text|>', '<|end_of_text|>', '<|eot_id|>', '<|start_header_id|>', '<|end_header_id|>',
              '<|pad|>']
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(CORPUS, trainer=trainer)
  tok.save(os.path.join(directory, 'tokenizer.json'))
  if config is None:
    config = {'bos_token': '<|begin_of_text|>', 'eos_token': '<|eot_id|>', 'pad_token': '<|pad|>'}
  _write_json(os.path.join(directory, 'tokenizer_config.json'), config)
  return directory


def make_sp_dir(directory: str, config: dict | None = None) -> str:
  """A tiny SentencePiece BPE model (Gemma-like ids: pad 0, eos 1, bos 2, unk 3; byte fallback)."""
  buffer = io.BytesIO()
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(CORPUS), model_writer=buffer, vocab_size=400, model_type='bpe',
      pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece='<pad>', eos_piece='<eos>', bos_piece='<bos>',
      unk_piece='<unk>', user_defined_symbols=['<start_of_turn>', '<end_of_turn>'], byte_fallback=True,
      character_coverage=1.0, normalization_rule_name='identity', add_dummy_prefix=False,
      remove_extra_whitespaces=False, split_digits=True, minloglevel=2)
  with open(os.path.join(directory, 'tokenizer.model'), 'wb') as f:
    f.write(buffer.getvalue())
  if config is not None:
    _write_json(os.path.join(directory, 'tokenizer_config.json'), config)
  return directory


@pytest.fixture(scope='module')
def bpe_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  return make_bpe_dir(str(tmp_path_factory.mktemp('bpe')))


@pytest.fixture(scope='module')
def sp_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
  return make_sp_dir(str(tmp_path_factory.mktemp('sp')))


# ---------------------------------------------------------------- bytes

def test_bytes_ids_and_round_trip() -> None:
  tok = load_tokenizer('bytes')
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (0, 1, 2, 259)
  assert tok.encode('A') == [ord('A') + 3]
  assert tok.encode('A', add_bos=True) == [1, ord('A') + 3]
  for text in UNICODE_SAMPLES:
    ids = tok.encode(text)
    assert all(3 <= i < 259 for i in ids)
    assert tok.decode(ids) == text
  assert tok.encode('é') == [0xC3 + 3, 0xA9 + 3]


def test_bytes_special_tokens_in_text_and_decode_skip() -> None:
  tok = load_tokenizer('bytes')
  ids = tok.encode('<s>hi</s><pad>')
  assert ids == [1, ord('h') + 3, ord('i') + 3, 2, 0]
  assert tok.decode(ids) == 'hi'
  assert tok.decode(ids, skip_special=False) == '<s>hi</s><pad>'
  assert tok.decode(np.array(ids, dtype=np.int32)) == 'hi'
  assert tok.token_to_id('</s>') == 2 and tok.token_to_id('<0x41>') == 0x41 + 3
  assert tok.token_to_id('nope') is None


def test_bytes_invalid_utf8_decodes_with_replacement() -> None:
  tok = load_tokenizer('bytes')
  assert tok.decode([0xC3 + 3]) == '\ufffd'


@hypothesis.given(st.text(max_size=40))
@hypothesis.settings(max_examples=50, deadline=None)
def test_bytes_round_trip_any_text(text: str) -> None:
  tok = load_tokenizer('bytes')
  # Text that happens to spell a special token becomes that token (as in Hugging Face); skip_special=False restores it.
  assert tok.decode(tok.encode(text), skip_special=False) == text


# ---------------------------------------------------------------- tokenizer.json (BPE)

def test_bpe_special_ids_from_tokenizer_config(bpe_dir: str) -> None:
  tok = load_tokenizer(bpe_dir)
  assert tok.bos_id == tok.token_to_id('<|begin_of_text|>') == 0
  assert tok.eos_id == tok.token_to_id('<|eot_id|>') == 2
  assert tok.pad_id == tok.token_to_id('<|pad|>') == 5
  assert tok.eos_ids == (2,)
  assert tok.special_tokens['bos_token'] == '<|begin_of_text|>'
  raw = tokenizers.Tokenizer.from_file(os.path.join(bpe_dir, 'tokenizer.json'))
  assert tok.vocab_size == raw.get_vocab_size(with_added_tokens=True)


def test_bpe_unicode_round_trip(bpe_dir: str) -> None:
  tok = load_tokenizer(bpe_dir)
  for text in UNICODE_SAMPLES:
    ids = tok.encode(text)
    assert max(ids, default=0) < tok.vocab_size
    assert tok.decode(ids) == text, text
  # Trained merges are used: a corpus word is fewer tokens than bytes.
  assert len(tok.encode('the quick brown fox')) < len('the quick brown fox')


@hypothesis.given(st.text(max_size=30))
@hypothesis.settings(max_examples=40, deadline=None, suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
def test_bpe_round_trip_any_text(bpe_dir: str, text: str) -> None:
  hypothesis.assume('<|' not in text)  # text spelling a special token becomes that token
  tok = load_tokenizer(bpe_dir)
  assert tok.decode(tok.encode(text)) == text


def test_bpe_special_tokens_in_text(bpe_dir: str) -> None:
  tok = load_tokenizer(bpe_dir)
  ids = tok.encode('<|start_header_id|>user<|end_header_id|>hi<|eot_id|>', add_bos=True)
  header, end, eot = (tok.token_to_id(t) for t in ('<|start_header_id|>', '<|end_header_id|>', '<|eot_id|>'))
  assert ids[0] == tok.bos_id and ids[1] == header and end in ids and ids[-1] == eot
  assert tok.decode(ids) == 'userhi'
  assert tok.decode(ids, skip_special=False) == '<|begin_of_text|><|start_header_id|>user<|end_header_id|>hi<|eot_id|>'


def test_bpe_matches_transformers(bpe_dir: str) -> None:
  transformers = pytest.importorskip('transformers')
  hf = transformers.PreTrainedTokenizerFast(tokenizer_file=os.path.join(bpe_dir, 'tokenizer.json'),
                                            bos_token='<|begin_of_text|>', eos_token='<|eot_id|>',
                                            pad_token='<|pad|>')
  tok = load_tokenizer(bpe_dir)
  for text in UNICODE_SAMPLES + ['<|start_header_id|>x<|end_header_id|> y<|eot_id|>']:
    assert tok.encode(text) == hf.encode(text, add_special_tokens=False), text
    ids = tok.encode(text)
    assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id)


def test_model_configs_give_stop_ids_and_eos_never_bos_or_pad(tmp_path) -> None:
  d = make_bpe_dir(str(tmp_path), config={})
  _write_json(os.path.join(d, 'generation_config.json'), {'bos_token_id': 0, 'eos_token_id': [1, 2]})
  _write_json(os.path.join(d, 'config.json'), {'bos_token_id': 3, 'eos_token_id': 3, 'pad_token_id': 5})
  tok = load_tokenizer(d)
  # The tokenizer files name no bos/pad: transformers' tokenizer has none, whatever the model configs say.
  assert (tok.bos_id, tok.pad_id) == (None, None)
  # eos and the stop ids: generation_config.json wins over config.json.
  assert tok.eos_id == 1 and tok.eos_ids == (1, 2)
  assert tok.special_tokens['eos_token'] == '<|end_of_text|>' and 'bos_token' not in tok.special_tokens


def test_null_bos_in_tokenizer_config_means_none(tmp_path) -> None:
  """Qwen2: config.json says bos_token_id 151643, tokenizer_config.json says bos_token null."""
  d = make_bpe_dir(str(tmp_path), config={'bos_token': None, 'eos_token': '<|eot_id|>', 'pad_token': '<|pad|>'})
  _write_json(os.path.join(d, 'config.json'), {'bos_token_id': 1, 'eos_token_id': 1})
  _write_json(os.path.join(d, 'generation_config.json'), {'bos_token_id': 1, 'eos_token_id': [2, 1]})
  tok = load_tokenizer(d)
  assert tok.bos_id is None and tok.eos_id == 2 and tok.eos_ids == (2, 1)
  # A SentencePiece model's own <bos> gives way to an explicit null too.
  (tmp_path / 'sp').mkdir()
  sp = load_tokenizer(make_sp_dir(str(tmp_path / 'sp'), config={'bos_token': None}))
  assert sp.bos_id is None and sp.eos_id == 1


def test_special_tokens_map_and_added_token_dicts(tmp_path) -> None:
  d = make_bpe_dir(str(tmp_path), config={'eos_token': {'content': '<|end_of_text|>', '__type': 'AddedToken'}})
  _write_json(os.path.join(d, 'special_tokens_map.json'),
              {'bos_token': {'content': '<|begin_of_text|>'}, 'eos_token': '<|eot_id|>'})
  _write_json(os.path.join(d, 'generation_config.json'), {'eos_token_id': [1, 2]})
  tok = load_tokenizer(d)
  assert tok.eos_id == 1  # tokenizer_config.json beats special_tokens_map.json
  assert tok.bos_id == 0
  assert tok.eos_ids == (1, 2)
  assert tok.pad_id is None


def test_special_token_missing_from_vocab_is_user_error(tmp_path) -> None:
  d = make_bpe_dir(str(tmp_path), config={'eos_token': '<nonexistent>'})
  with pytest.raises(UserError, match="eos_token '<nonexistent>'"):
    load_tokenizer(d)


# ---------------------------------------------------------------- SentencePiece

def test_sentencepiece_ids_and_round_trip(sp_dir: str) -> None:
  tok = load_tokenizer(sp_dir)
  # No tokenizer_config.json: bos/eos/unk from the model, no pad (as transformers' converted tokenizer).
  assert (tok.pad_id, tok.eos_id, tok.bos_id, tok.unk_id) == (None, 1, 2, 3)
  assert tok.vocab_size == 400
  for text in UNICODE_SAMPLES + ['never seen: 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 Ωμέγα']:
    ids = tok.encode(text)
    assert 3 not in ids, text  # byte fallback: nothing becomes <unk>
    assert tok.decode(ids) == text, text
  sp = sentencepiece.SentencePieceProcessor(model_file=os.path.join(sp_dir, 'tokenizer.model'))
  assert tok.encode('the quick brown fox') == sp.encode('the quick brown fox')


def test_sentencepiece_special_tokens_in_text(sp_dir: str) -> None:
  tok = load_tokenizer(sp_dir)
  sot, eot = tok.token_to_id('<start_of_turn>'), tok.token_to_id('<end_of_turn>')
  ids = tok.encode('<bos><start_of_turn>user\nhi<end_of_turn><eos>')
  # Control pieces (<bos>, <eos>) are split out by us; user-defined ones by SentencePiece.
  assert ids[:2] == [tok.bos_id, sot] and ids[-2:] == [eot, tok.eos_id]
  assert tok.decode(ids, skip_special=False) == '<bos><start_of_turn>user\nhi<end_of_turn><eos>'
  assert tok.decode(ids) == '<start_of_turn>user\nhi<end_of_turn>'
  assert tok.encode('hi', add_bos=True)[0] == tok.bos_id


def test_sentencepiece_added_tokens_extend_vocab(tmp_path) -> None:
  d = make_sp_dir(str(tmp_path), config={
      'added_tokens_decoder': {'400': {'content': '<tool>', 'special': True}},
      'pad_token': '<tool>'})
  tok = load_tokenizer(d)
  assert tok.vocab_size == 401 and tok.token_to_id('<tool>') == 400 and tok.pad_id == 400
  ids = tok.encode('a<tool>b')
  assert 400 in ids and tok.decode(ids, skip_special=False) == 'a<tool>b'


def test_prefers_tokenizer_json_like_transformers(tmp_path) -> None:
  d = make_bpe_dir(str(tmp_path))
  make_sp_dir(d)
  assert type(load_tokenizer(d)).__name__ == 'HFTokenizer'
  # The config names Llama-3 tokens; the SentencePiece model has none: a clear error, not wrong ids.
  with pytest.raises(UserError, match="bos_token '<\\|begin_of_text\\|>'"):
    load_tokenizer(os.path.join(d, 'tokenizer.model'))


# ---------------------------------------------------------------- errors and vocab checks

def test_load_errors_are_user_errors(tmp_path) -> None:
  with pytest.raises(UserError, match='does not exist'):
    load_tokenizer(str(tmp_path / 'missing'))
  with pytest.raises(UserError, match='no tokenizer in'):
    load_tokenizer(str(tmp_path))
  bad = tmp_path / 'tokenizer.json'
  bad.write_text('{"not": "a tokenizer"}')
  with pytest.raises(UserError, match='not a valid Hugging Face tokenizer.json'):
    load_tokenizer(str(tmp_path))
  bad_sp = tmp_path / 'x.model'
  bad_sp.write_bytes(b'garbage')
  with pytest.raises(UserError, match='not a valid SentencePiece model'):
    load_tokenizer(str(bad_sp))
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'tokenizer.json').write_text('{}')
  (tmp_path / 'sub' / 'tokenizer_config.json').write_text('[1, 2]')
  with pytest.raises(UserError):
    load_tokenizer(str(tmp_path / 'sub'))


@dataclasses.dataclass(frozen=True)
class _Cfg:
  vocab_size: int


def test_check_vocab_fits(bpe_dir: str) -> None:
  tok = load_tokenizer(bpe_dir)
  check_vocab_fits(tok, _Cfg(tok.vocab_size))
  check_vocab_fits(tok, _Cfg(tok.vocab_size + 128))  # padded embeddings are fine
  with pytest.raises(UserError, match=rf'ids up to {tok.vocab_size - 1}.*vocab_size {tok.vocab_size - 1}\b'):
    check_vocab_fits(tok, _Cfg(tok.vocab_size - 1))
  check_vocab_fits(load_tokenizer('bytes'), _Cfg(259))
  with pytest.raises(UserError, match='vocab_size 256'):
    check_vocab_fits(load_tokenizer('bytes'), _Cfg(256))
  with pytest.raises(UserError, match='no integer vocab_size'):
    check_vocab_fits(tok, object())
