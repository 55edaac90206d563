"""SFT, reward-model and DPO stages on the tiny harm language: a few steps each, checked exactly."""

import json
import math

import jax
import numpy as np
import pytest

from configs import dpo as dpo_config
from configs import reward_model as rm_config
from configs import sft as sft_config
from deepalign import models
from deepalign.errors import UserError
from deepalign.train import loop, metrics_writer, pair_rows, stages

# Each test compiles a model step (and sampling for the harm eval): ~15 s of CPU apiece.
pytestmark = pytest.mark.slow


def _tiny(config, steps=3):
  config.data.update({'language': 'tiny', 'num_train': 64, 'num_eval': 16, 'max_len': 24,
                      'max_prompt_len': 8, 'max_response_len': 8})
  config.model.update({'hidden_size': 32, 'num_layers': 1, 'num_heads': 2, 'num_kv_heads': 2,
                       'head_dim': 16, 'intermediate_size': 64, 'max_position_embeddings': 32})
  config.train.update({'num_steps': steps, 'batch_size': 8, 'log_every': 1, 'eval_every': 0,
                       'checkpoint_every': 0, 'async_checkpointing': False})
  return config


def _run(config, workdir):
  result = loop.train(stages.build_task(config, str(workdir)), config, str(workdir))
  rows = metrics_writer.read_metrics(str(workdir))
  for row in rows:
    assert all(v is not None and math.isfinite(v) for v in row.values()), row
  return result, rows


@pytest.fixture(scope='module')
def sft_workdir(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('sft')
  config = _tiny(sft_config.get_config('toy'))
  config.sft.update({'safety_fraction': 0.25, 'harm_eval_depths': (0, 2), 'eval_batches': 1})
  result, rows = _run(config, workdir)
  return workdir, result, rows


def test_sft_trains_mixes_safety_rows_and_exports(sft_workdir):
  workdir, result, rows = sft_workdir
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert {'train/nll_main', 'train/nll_safety', 'eval/nll', 'eval/harm_at_0', 'eval/harm_at_2',
          'eval/helpful'} <= set(rows[-1])
  model, params = models.from_pretrained(workdir / 'export')
  assert model.config.head == 'lm'
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(result.state.params), params)


def test_sft_token_constrained_starts_at_its_closed_form(tmp_path):
  """Policy == aligned model at step 1: every token costs (2 / beta_t) log 2."""
  config = _tiny(sft_config.get_config('toy'), steps=1)
  config.sft.update({'objective': 'token_constrained', 'harm_eval': False, 'eval_batches': 1})
  task = stages.build_task(config, str(tmp_path))
  batch = next(task.train_iterator())
  mask = batch['loss_mask'][:, 1:]
  pos = np.cumsum(mask, axis=1) * mask
  beta = np.where(pos == 1, 0.5, np.where((pos >= 2) & (pos <= 5), 2.0, 0.1))
  expected = np.sum(mask * 2.0 / beta * np.log(2.0)) / np.sum(mask.any(axis=1))
  _, rows = _run(config, tmp_path)
  np.testing.assert_allclose(rows[0]['train/loss'], expected, rtol=1e-5)


def test_reward_model_exports_a_sequence_classifier(sft_workdir, tmp_path):
  config = _tiny(rm_config.get_config('toy'))
  config.model.init_from = str(sft_workdir[0])
  config.train.best_metric = ''
  _, rows = _run(config, tmp_path)
  assert 0.0 <= rows[-1]['eval/accuracy'] <= 1.0 and 'train/accuracy' in rows[0]
  hf = json.loads((tmp_path / 'export' / 'config.json').read_text())
  assert hf['architectures'][0].endswith('ForSequenceClassification')
  model, _ = models.from_pretrained(tmp_path / 'export')
  assert model.config.head == 'score'


def _dpo(sft_workdir, **dpo):
  config = _tiny(dpo_config.get_config('toy'), steps=2)
  config.model.init_from = str(sft_workdir[0])
  config.train.eval_at_start = False
  config.optimizer.warmup_steps = 0  # warmup starts at lr 0: step 1 would not move the policy
  config.dpo.update({'harm_eval': False, 'eval_batches': 1, **dpo})
  return config


def test_dpo_starts_at_log2_and_precomputed_reference_matches(sft_workdir, tmp_path):
  """At step 1 the policy is the reference: h = 0, so the sigmoid loss is exactly log 2."""
  _, on_the_fly = _run(_dpo(sft_workdir), tmp_path / 'a')
  _, precomputed = _run(_dpo(sft_workdir, reference='precomputed'), tmp_path / 'b')
  np.testing.assert_allclose(on_the_fly[0]['train/dpo_loss'], math.log(2.0), rtol=1e-5)
  np.testing.assert_allclose(on_the_fly[0]['train/loss'],  # + rpo_alpha * NLL(chosen)
                             math.log(2.0) + on_the_fly[0]['train/chosen_nll'], rtol=1e-5)
  for a, b in zip(on_the_fly, precomputed):
    np.testing.assert_allclose(a['train/loss'], b['train/loss'], rtol=1e-4)


def test_dpo_shared_prefix_runs_each_prompt_once_with_the_same_loss(sft_workdir, tmp_path):
  """dpo.shared_prefix_len: batches whose pairs share it are marked, and the loss and gradient
  of the marked batch (prompt once per pair) are the full rows' (the marker removed)."""
  task = stages.build_task(_dpo(sft_workdir, shared_prefix_len=3), str(tmp_path))
  batch = next(task.train_iterator())
  assert batch[pair_rows.SHARED_PREFIX].shape == (8, 3)  # the toy template's first tokens
  full = {k: v for k, v in batch.items() if k != pair_rows.SHARED_PREFIX}
  params = task.init_params(loop.init_rng(_dpo(sft_workdir)))
  grad = jax.jit(jax.value_and_grad(task.loss_fn, has_aux=True))
  (loss_shared, _), g_shared = grad(params, task.frozen, batch, jax.random.key(0))
  (loss_full, _), g_full = grad(params, task.frozen, full, jax.random.key(0))
  np.testing.assert_allclose(loss_shared, loss_full, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_shared), jax.tree.leaves(g_full)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()) + 1e-7)
  with pytest.raises(UserError, match='shared_prefix_len'):
    stages.build_task(_dpo(sft_workdir, shared_prefix_len=-1), str(tmp_path))


def test_dpo_recovery_pairs_train(sft_workdir, tmp_path):
  _, rows = _run(_dpo(sft_workdir, recovery_fraction=0.5, loss_type='ipo'), tmp_path)
  assert rows[-1]['train/rewards/margins'] != 0.0
  assert 'eval/reward_accuracy' in rows[-1]
  with pytest.raises(UserError, match='precomputed'):
    stages.build_task(_dpo(sft_workdir, recovery_fraction=0.5, reference='precomputed'), str(tmp_path))


def test_sft_trains_on_packed_rows(tmp_path):
  """data.pack=True: several examples per row, attention kept inside each (segment ids)."""
  config = _tiny(sft_config.get_config('toy'), steps=2)
  config.data.update({'pack': True, 'max_len': 48})
  config.sft.update({'harm_eval': False, 'eval_batches': 1})
  _, rows = _run(config, tmp_path)
  assert [r['step'] for r in rows] == [1, 2]
  assert 0 < rows[-1]['train/nll'] < 10
