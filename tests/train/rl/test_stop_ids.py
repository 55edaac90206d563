"""The RL stages sample with every stop id of the tokenizer (Llama-3-Instruct's <|eot_id|>, Gemma-it's
<end_of_turn>), and pad as the prompt pipeline does when the tokenizer has no pad id."""

import types

from configs import ppo as ppo_config
from deepalign.train.rl import stage as rl


def _tokenizer(eos_id, eos_ids, pad_id):
  return types.SimpleNamespace(eos_id=eos_id, eos_ids=eos_ids, pad_id=pad_id)


def test_rollout_spec_stops_on_all_the_tokenizers_eos_ids():
  config = ppo_config.get_config('toy')
  llama3_instruct = _tokenizer(eos_id=128009, eos_ids=(128009, 128001, 128008), pad_id=None)
  sampling = rl.rollout_spec(config, llama3_instruct).sampling
  assert sampling.eos_id == (128009, 128001, 128008)
  assert sampling.pad_id == 128009  # no pad id: EOS pads, as in the prompt pipeline


def test_rollout_spec_with_a_single_eos_and_a_pad():
  config = ppo_config.get_config('toy')
  sampling = rl.rollout_spec(config, _tokenizer(eos_id=2, eos_ids=(), pad_id=0)).sampling
  assert (sampling.eos_id, sampling.pad_id) == ((2,), 0)
