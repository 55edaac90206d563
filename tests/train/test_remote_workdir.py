"""A workdir on gs:// (a TPU pod's): every read and write of it goes through etils.epath.

No network: a fake `gs://` backend for epath stores `gs://BUCKET/...` under a local directory, and
`open`/`os.makedirs` are made to fail on any path that still holds `gs:`: code that bypassed epath
(os.path.abspath, open, os.replace) would write a local `./gs:/BUCKET/...` directory instead,
and fails here. orbax's own gs:// support (tensorstore's GCS driver) is orbax's: the checkpoint
test checks that orbax receives the gs:// URI untouched, and the stage test hands orbax the
fake bucket's local directory for it.
"""

import builtins
import json
import os
import pathlib
import sys

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend
from etils.epath import gpath

from deepalign import models
from deepalign.errors import UserError
from deepalign.train import atomic_files, checkpointing, metrics_writer, paths, workdir_check

ROOT = pathlib.Path(__file__).resolve().parents[2]


class _LocalBucketBackend(epath_backend._OsPathBackend):  # pylint: disable=protected-access
  """epath's os backend, with `gs://X` stored as `<root>/X`; paths it returns map back."""

  def __init__(self, root: str):
    self.root = root

  def _local(self, path) -> str:
    path = os.fspath(path)
    if path.startswith(self.root):  # the os backend's own calls to itself
      return path
    assert path.startswith('gs://'), path
    return os.path.join(self.root, path[len('gs://'):])

  def _remote(self, path: str) -> str:
    return 'gs://' + os.path.relpath(path, self.root)

  def open(self, path, mode):
    if any(m in mode for m in 'wax'):  # an object store has no directories to create first
      super().makedirs(os.path.dirname(self._local(path)), exist_ok=True)
    return super().open(self._local(path), mode)

  def exists(self, path):
    return super().exists(self._local(path))

  def isdir(self, path):
    return super().isdir(self._local(path))

  def listdir(self, path):
    return super().listdir(self._local(path))

  def glob(self, path):
    return [self._remote(p) for p in super().glob(self._local(path))]

  def walk(self, top, *, top_down=True, on_error=None):
    for root, dirs, files in super().walk(self._local(top), top_down=top_down, on_error=on_error):
      yield self._remote(root), dirs, files

  def makedirs(self, path, *, exist_ok=False, mode=None):
    return super().makedirs(self._local(path), exist_ok=exist_ok, mode=mode)

  def mkdir(self, path, *, exist_ok=False, mode=None):
    return super().mkdir(self._local(path), exist_ok=exist_ok, mode=mode)

  def rmtree(self, path):
    return super().rmtree(self._local(path))

  def remove(self, path):
    return super().remove(self._local(path))

  def rename(self, path, dst):
    return super().rename(self._local(path), self._local(dst))

  def replace(self, path, dst):
    return super().replace(self._local(path), self._local(dst))

  def copy(self, path, dst, overwrite):
    return super().copy(self._local(path), self._local(dst), overwrite)

  def stat(self, path):
    return super().stat(self._local(path))


@pytest.fixture(name='bucket')
def fake_bucket(tmp_path, monkeypatch) -> pathlib.Path:
  """The local directory behind `gs://`; cwd is an empty directory that must stay empty."""
  root = tmp_path / 'gcs'
  root.mkdir()
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, 'gs', _LocalBucketBackend(str(root)))  # pylint: disable=protected-access
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  cwd = tmp_path / 'cwd'
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  real_open, real_makedirs = builtins.open, os.makedirs

  def no_gs(function):
    def wrapper(path, *args, **kwargs):
      if isinstance(path, (str, os.PathLike)) and 'gs:' in os.fspath(path):
        raise AssertionError(f'{function.__name__}({os.fspath(path)!r}) bypassed etils.epath')
      return function(path, *args, **kwargs)
    return wrapper

  monkeypatch.setattr(builtins, 'open', no_gs(real_open))
  monkeypatch.setattr(os, 'makedirs', no_gs(real_makedirs))
  yield root
  assert not list(cwd.iterdir()), 'a gs:// path became a local directory'


def test_paths_keep_the_scheme_and_local_paths_as_before() -> None:
  assert paths.join('gs://b/run', 'metrics.jsonl') == 'gs://b/run/metrics.jsonl'
  assert paths.absolute('gs://b/run/checkpoints') == 'gs://b/run/checkpoints'
  assert paths.join('run', 'x') == os.path.join('run', 'x')
  assert paths.absolute('run') == os.path.abspath('run')
  assert paths.is_local(epath.Path('/tmp/x')) and not paths.is_local(epath.Path('gs://b/x'))


def test_atomic_writes_and_metrics_on_gs(bucket) -> None:
  atomic_files.write_json_atomic('gs://b/run/report.json', {'a': 1})
  assert json.loads((bucket / 'b/run/report.json').read_text()) == {'a': 1}
  writer = metrics_writer.MetricsWriter('gs://b/run')
  for step in (1, 2, 3):
    writer.write(step, {'loss': float(step), 'bad': float('nan')})
  writer.close()
  assert [r['step'] for r in metrics_writer.read_metrics('gs://b/run')] == [1, 2, 3]
  # a resume at step 2 drops the later line, and appends after it
  writer = metrics_writer.MetricsWriter('gs://b/run', resume_step=2)
  writer.write(3, {'loss': 30.0})
  writer.close()
  rows = [json.loads(line) for line in (bucket / 'b/run/metrics.jsonl').read_text().splitlines()]
  assert rows == [{'step': 1, 'loss': 1.0, 'bad': None}, {'step': 2, 'loss': 2.0, 'bad': None},
                  {'step': 3, 'loss': 30.0}]


def test_workdir_check_on_gs(bucket) -> None:
  config = ml_collections.ConfigDict({'stage': 'sft', 'model': {'hidden_size': 32},
                                      'train': {'allow_config_change': False}})
  workdir_check.check_workdir(config, 'gs://b/new')  # a fresh one: fine, nothing left
  assert not (bucket / 'b/new').exists() or not list((bucket / 'b/new').iterdir())
  (bucket / 'b').mkdir(exist_ok=True)
  (bucket / 'b/file').write_text('x')
  with pytest.raises(UserError, match='is a file'):
    workdir_check.check_workdir(config, 'gs://b/file')
  (bucket / 'b/old').mkdir()
  (bucket / 'b/old/config.json').write_text(json.dumps({'stage': 'dpo', 'model': {'hidden_size': 32}}))
  with pytest.raises(UserError, match='another stage'):
    workdir_check.check_workdir(config, 'gs://b/old')
  (bucket / 'b/old/config.json').write_text('{not json')
  with pytest.raises(UserError, match='not a readable JSON'):
    workdir_check.check_workdir(config, 'gs://b/old')


def test_checkpointer_gives_orbax_the_gs_uri(bucket, monkeypatch) -> None:
  seen = []

  class Manager:
    def __init__(self, directory, **kwargs):
      seen.append(os.fspath(directory))
      self.directory = directory

  monkeypatch.setattr(checkpointing.ocp, 'CheckpointManager', Manager)
  checkpointing.Checkpointer('gs://b/run', best_metric='eval/loss', best_mode='min')
  assert seen == ['gs://b/run/checkpoints', 'gs://b/run/best']
  # the clean-ups a failed save does, through epath
  partial = bucket / 'b/run/checkpoints/4.orbax-checkpoint-tmp-1'
  partial.mkdir(parents=True)
  (partial / 'x').write_text('x')
  (bucket / 'b/run/checkpoints/2').mkdir()
  checkpointing._remove_partial_saves('gs://b/run/checkpoints')  # pylint: disable=protected-access
  assert sorted(p.name for p in (bucket / 'b/run/checkpoints').iterdir()) == ['2']
  bad = bucket / 'b/run/checkpoints/3/state'
  bad.mkdir(parents=True)
  (bad / 'f').write_text('damaged')
  checkpointing._move_remote_tree(epath.Path('gs://b/run/checkpoints/3'),  # pylint: disable=protected-access
                                  epath.Path('gs://b/run/unreadable_checkpoints/3-x'))
  assert not (bucket / 'b/run/checkpoints/3').exists()
  assert (bucket / 'b/run/unreadable_checkpoints/3-x/state/f').read_text() == 'damaged'


def _tiny_model():
  cfg = models.ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_layers=1,
                           num_heads=2, num_kv_heads=1, head_dim=8)
  model = models.Transformer(cfg)
  return model, models.init_params(model, jax.random.PRNGKey(0))


def test_save_pretrained_to_gs_writes_the_local_bytes(bucket, tmp_path) -> None:
  model, params = _tiny_model()
  for limit in ('5GB', '4KB'):  # one file, and shards with an index
    local = models.save_pretrained(model, params, tmp_path / f'local-{limit}', max_shard_size=limit)
    remote = models.save_pretrained(model, params, f'gs://b/export-{limit}', max_shard_size=limit)
    assert remote == local
    for name in local:
      assert (bucket / f'b/export-{limit}' / name).read_bytes() == (
          tmp_path / f'local-{limit}' / name).read_bytes(), name


def _tiny_sft_config() -> ml_collections.ConfigDict:
  """configs/sft.py:toy with tests/train/tiny_sft.py's TINY overrides (1 layer, 4 steps)."""
  sys.path.insert(0, str(ROOT))
  from configs import sft  # pylint: disable=import-outside-toplevel
  tiny = _load('tiny_sft', ROOT / 'tests/train/tiny_sft.py')
  config = sft.get_config('toy')
  for flag in tiny.TINY[1:]:
    key, value = flag[len('--config.'):].split('=', 1)
    *parents, leaf = key.split('.')
    node = config
    for name in parents:
      node = node[name]
    old = node[leaf]
    node[leaf] = (value == 'True') if isinstance(old, bool) else type(old)(value)
  return config


def _load(name: str, path: pathlib.Path):
  import importlib.util  # pylint: disable=import-outside-toplevel
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_a_tiny_stage_runs_and_resumes_in_a_gs_workdir(bucket, monkeypatch) -> None:
  from deepalign.train import run_stage  # pylint: disable=import-outside-toplevel
  real_manager = checkpointing.ocp.CheckpointManager
  given = []

  def manager(directory, **kwargs):  # orbax's gs:// is tensorstore's GCS driver: the fake bucket
    given.append(os.fspath(directory))
    return real_manager(str(bucket / os.fspath(directory)[len('gs://'):]), **kwargs)

  monkeypatch.setattr(checkpointing.ocp, 'CheckpointManager', manager)
  config = _tiny_sft_config()
  workdir_check.check_workdir(config, 'gs://b/sft')
  run_stage.train_stage(config, 'gs://b/sft')
  run = bucket / 'b/sft'
  assert given[0] == 'gs://b/sft/checkpoints'
  assert json.loads((run / 'config.json').read_text())['stage'] == 'sft'
  assert [r['step'] for r in metrics_writer.read_metrics('gs://b/sft')] == [2, 4]
  assert (run / 'checkpoints/4').is_dir() and (run / 'export/model.safetensors').is_file()
  # the same command again: resumes at step 4, finishes, rewrites the same export
  export = (run / 'export/model.safetensors').read_bytes()
  result = run_stage.train_stage(config, epath.Path('gs://b/sft'))
  assert int(result.state.step) == 4 and not result.preempted
  assert (run / 'export/model.safetensors').read_bytes() == export
  assert [r['step'] for r in metrics_writer.read_metrics('gs://b/sft')] == [2, 4]
