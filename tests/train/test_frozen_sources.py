"""A resume whose frozen models' sources changed (they are rebuilt, not checkpointed) is refused."""

import json
import logging

import ml_collections
import pytest

from deepalign.errors import UserError
from deepalign.train import frozen_sources


def _model_dir(path, weights: bytes):
  path.mkdir(parents=True)
  (path / 'config.json').write_text(json.dumps({'model_type': 'llama'}))
  (path / 'model.safetensors').write_bytes(weights)
  return path


def _config(tmp_path, **train) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'stage': 'ppo',
      'model': {'init_from': str(tmp_path / 'sft'), 'hf_dir': ''},
      'rl': {'reward_from': str(tmp_path / 'rm'), 'judge': 'env'},
      'train': {'allow_config_change': False, **train}})


def test_a_changed_frozen_model_source_refuses_the_resume(tmp_path, caplog):
  _model_dir(tmp_path / 'sft' / 'export', b'policy' * 10)
  _model_dir(tmp_path / 'rm', b'\x00' * (3 << 20))  # > 2 MiB: only its ends are hashed
  workdir = tmp_path / 'run'
  config = _config(tmp_path)
  assert set(frozen_sources.sources(config)) == {'reference', 'reward'}
  assert frozen_sources.sources(config)['reference'] == str(tmp_path / 'sft' / 'export')
  frozen_sources.check(config, workdir)  # a first start: nothing to compare
  frozen_sources.record(config, workdir)
  (workdir / 'checkpoints' / '2').mkdir(parents=True)
  frozen_sources.check(config, workdir)  # same sources: resumes
  # the same files copied elsewhere would be a path change; same path, same bytes: no change
  weights = tmp_path / 'rm' / 'model.safetensors'
  weights.write_bytes(b'\x00' * (3 << 20))
  frozen_sources.check(config, workdir)
  weights.write_bytes(b'\x01' + b'\x00' * ((3 << 20) - 1))  # retrained into the same dir
  with pytest.raises(UserError, match=r'other frozen models .*reward \(.*rm; changed files: '
                                      r'model.safetensors\).*allow_config_change=True'):
    frozen_sources.check(config, workdir)
  with caplog.at_level(logging.WARNING):
    frozen_sources.check(_config(tmp_path, allow_config_change=True), workdir)
  assert 'frozen models that changed' in caplog.text


def test_no_checkpoint_or_no_record_is_not_checked(tmp_path):
  _model_dir(tmp_path / 'sft' / 'export', b'a')
  _model_dir(tmp_path / 'rm', b'b')
  workdir = tmp_path / 'run'
  frozen_sources.record(_config(tmp_path), workdir)
  (tmp_path / 'rm' / 'model.safetensors').write_bytes(b'c')
  frozen_sources.check(_config(tmp_path), workdir)  # no checkpoint yet: starts from scratch anyway
  (workdir / 'checkpoints' / '2').mkdir(parents=True)
  (workdir / frozen_sources.FILE).unlink()
  frozen_sources.check(_config(tmp_path), workdir)  # a run from before fingerprints
