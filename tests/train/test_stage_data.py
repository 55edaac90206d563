"""A stage's TFDS records: `config.data.on_bad_row` reaches the builder, and on several processes
only process 0 prepares the shared data dir while the others wait at a barrier and then read."""

import json
import os

import jax
import ml_collections
import pytest

from configs import common
from deepalign.data import builders
from deepalign.errors import UserError
from deepalign.train import stage_data

GOOD = {'messages': [{'role': 'user', 'content': 'q'}, {'role': 'assistant', 'content': 'a'}]}
BAD = {'messages': [{'role': 'user', 'content': 'q'}]}  # no assistant turn


def _config(tmp_path, on_bad_row='error') -> ml_collections.ConfigDict:
  manual = tmp_path / 'manual'
  manual.mkdir(exist_ok=True)
  with open(manual / 'train.jsonl', 'w') as f:
    f.writelines(json.dumps(row) + '\n' for row in (GOOD, BAD, GOOD))
  data = common.data_defaults()
  data.update(source='tfds', builder='sft_conversations', data_dir=str(tmp_path / 'tfds'),
              manual_dir=str(manual), on_bad_row=on_bad_row)
  return ml_collections.ConfigDict({'data': data})


def test_on_bad_row_from_the_config_reaches_the_builder(tmp_path):
  with pytest.raises(UserError, match=r'train.jsonl.*2'):
    stage_data.records(_config(tmp_path), None, 'sft', 'train')
  assert len(stage_data.records(_config(tmp_path, 'skip'), None, 'sft', 'train')) == 2
  with pytest.raises(UserError, match='on_bad_row'):
    stage_data.records(_config(tmp_path, 'ignore'), None, 'sft', 'train')


def test_only_process_zero_prepares_the_others_wait_then_read(tmp_path, monkeypatch):
  config = _config(tmp_path, 'skip')
  prepared, barriers, process = [], [], {'index': 1}
  real_prepare = builders.prepare
  monkeypatch.setattr(builders, 'prepare', lambda *a, **k: prepared.append(process['index']) or real_prepare(*a, **k))
  monkeypatch.setattr(stage_data.multihost_utils, 'sync_global_devices', barriers.append)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  monkeypatch.setattr(jax, 'process_index', lambda: process['index'])

  # Process 1 before process 0 has prepared (it failed): no waiting forever, no preparing, one clear error.
  with pytest.raises(UserError, match='by process 0'):
    stage_data.records(config, None, 'sft', 'train')
  assert (prepared, len(barriers)) == ([], 1) and not os.path.exists(tmp_path / 'tfds')

  process['index'] = 0
  first = stage_data.records(config, None, 'sft', 'train')
  assert (prepared, len(barriers)) == ([0], 2)

  process['index'] = 1
  second = stage_data.records(config, None, 'sft', 'train')
  assert (prepared, len(barriers), len(set(barriers))) == ([0], 3, 1)  # one barrier name for all
  assert [second[i] for i in range(len(second))] == [first[i] for i in range(len(first))]
  assert len(second) == 2
