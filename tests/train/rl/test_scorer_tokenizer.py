"""Issue 17 item 7: the reward model and the judge must read the policy's token ids as the
policy does; a scorer of another tokenizer is a clear UserError in build_task, before
anything is written. Tiny tokenizers of the synthetic language; no model is built."""

import json
import types

import pytest

from deepalign.envs.harm_language import HarmLanguage, HarmLanguageConfig
from deepalign.errors import UserError
from deepalign.train.rl import stage as rl

POLICY = HarmLanguage(HarmLanguageConfig(num_harmful_topics=2, num_benign_topics=2)).tokenizer
OTHER = HarmLanguage(HarmLanguageConfig(num_harmful_topics=3, num_benign_topics=3)).tokenizer
V = POLICY.vocab_size


def test_the_policys_own_tokenizer_passes():
  rl.check_scorer_tokenizer('judge', V, POLICY, V, POLICY)
  rl.check_scorer_tokenizer('reward_from', V, None, V, POLICY)  # none saved: same vocab size


def test_a_scorer_with_fewer_ids_than_the_tokenizer_is_refused():
  with pytest.raises(UserError, match='would be clamped'):
    rl.check_scorer_tokenizer('judge', V - 1, None, V, POLICY)


def test_a_scorer_saved_with_another_tokenizer_is_refused():
  with pytest.raises(UserError, match='another tokenizer'):
    rl.check_scorer_tokenizer('judge', max(OTHER.vocab_size, V), OTHER, V, POLICY)
  # Same size and special ids, other texts for the same ids (a re-ordered vocabulary): refused.
  shuffled = types.SimpleNamespace(
      vocab_size=V, bos_id=POLICY.bos_id, eos_id=POLICY.eos_id, pad_id=POLICY.pad_id,
      decode=lambda ids, skip_special=False: POLICY.decode([(ids[0] + 1) % V], skip_special))
  with pytest.raises(UserError, match='another tokenizer'):
    rl.check_scorer_tokenizer('reward_from', V, shuffled, V, POLICY)


def test_a_scorer_without_a_tokenizer_must_match_the_policys_vocab(tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({}))
  model = lambda vocab: types.SimpleNamespace(config=types.SimpleNamespace(vocab_size=vocab))
  rl._check_scorer('reward_from', str(tmp_path), model(V), model(V), POLICY)
  with pytest.raises(UserError, match='reward_from embeds'):
    rl._check_scorer('reward_from', str(tmp_path), model(V + 64), model(V), POLICY)
