"""The toy study's runs: which configs, which inputs, skipping finished runs, stopping on
preemption (deepalign/study/runs.py), and the config file."""

import json
import os
import types

import pytest

from configs import toy_study
from deepalign.errors import UserError
from deepalign.study import runs


def test_the_config_names_the_study_stage_and_every_run():
  config = toy_study.get_config()
  assert config.stage == 'toy_study'
  assert [r.name for r in runs.selected(config.study)] == list(toy_study.ALL_RUNS)
  with pytest.raises(UserError, match='unknown preset'):
    toy_study.get_config('gemma2_2b')


def test_a_subset_brings_the_runs_it_starts_from():
  config = toy_study.get_config()
  config.study.runs = 'ppo_sc'
  assert [r.name for r in runs.selected(config.study)] == ['reward_model', 'base_sc', 'ppo_sc']
  config.study.runs = 'dpo'
  assert [r.name for r in runs.selected(config.study)] == ['base', 'dpo']
  config.study.runs = 'base,ppo_typo'
  with pytest.raises(UserError, match="unknown run.*ppo_typo"):
    runs.selected(config.study)


def test_stage_configs_carry_the_study_rates_and_inputs(tmp_path):
  config = toy_study.get_config()
  config.study.base_self_correction_rate = 0.0
  config.study.second_base_self_correction_rate = 0.02
  config.study.rl_num_steps = 7
  config.study.recovery_coef = 3.0
  workdir = str(tmp_path)
  base = runs.stage_config(runs.BY_NAME['base'], config, workdir)
  assert (base.stage, base.data.self_correction_rate, base.model.init_from) == ('sft', 0.0, '')
  second = runs.stage_config(runs.BY_NAME['base_sc'], config, workdir)
  assert second.data.self_correction_rate == 0.02
  ppo = runs.stage_config(runs.BY_NAME['ppo_sc'], config, workdir)
  assert ppo.model.init_from == os.path.join(workdir, 'base_sc')
  assert ppo.rl.reward_from == os.path.join(workdir, 'reward_model')
  assert (ppo.train.num_steps, ppo.recovery.coef, ppo.recovery.batch_size) == (7, 0.0, 0)
  rec = runs.stage_config(runs.BY_NAME['ppo_recovery'], config, workdir)
  assert rec.recovery.coef == 3.0 and rec.recovery.batch_size > 0
  dpo_rec = runs.stage_config(runs.BY_NAME['dpo_recovery'], config, workdir)
  assert dpo_rec.stage == 'dpo' and dpo_rec.dpo.recovery_fraction > 0
  attack = runs.stage_config(runs.BY_NAME['attack_constrained'], config, workdir)
  assert (attack.stage, attack.sft.objective, attack.data.refusal_rate) == (
      'sft', 'token_constrained', 0.0)
  assert attack.model.init_from == os.path.join(workdir, 'ppo')
  assert runs.stage_config(runs.BY_NAME['attack_nll'], config, workdir).sft.objective == 'nll'
  # The bases are trained to fit their data (study.base_*), nothing else changes its SFT.
  assert (base.train.num_steps, base.optimizer.learning_rate) == (1600, 1e-2)
  config.study.base_num_steps = 1200
  config.study.base_learning_rate = 3e-3
  for name, steps, lr in (('base', 1200, 3e-3), ('base_sc', 1200, 3e-3), ('sft_recovery', 400, 3e-3),
                          ('attack_nll', config.study.attack_num_steps, 1e-3)):
    c = runs.stage_config(runs.BY_NAME[name], config, workdir)
    assert (c.train.num_steps, c.optimizer.learning_rate) == (steps, lr), name
  config.study.base_num_steps = config.study.base_learning_rate = 0  # 0: the SFT preset's
  base = runs.stage_config(runs.BY_NAME['base'], config, workdir)
  assert (base.train.num_steps, base.optimizer.learning_rate) == (400, 3e-3)
  for key in ('base_num_steps', 'base_learning_rate'):
    config.study[key] = -1
    with pytest.raises(UserError, match=key):
      runs.stage_config(runs.BY_NAME['base'], config, workdir)
    config.study[key] = 0
  # The entropy bonus on recovery rollouts goes to ppo_recovery; rl_entropy_coef to every PPO.
  config.study.rl_entropy_coef = 0.01
  assert (rec.recovery.entropy_coef, rec.ppo.entropy_coef, rec.recovery.min_depth) == (0.1, 0.0, 1)
  for name, coef in (('ppo', 0.01), ('ppo_recovery', 0.01), ('ppo_sc', 0.01)):
    assert runs.stage_config(runs.BY_NAME[name], config, workdir).ppo.entropy_coef == coef


def _fake_train(calls, preempt=()):
  def train(config, run_dir):
    name = os.path.basename(run_dir)
    calls.append(name)
    if name in preempt:
      return types.SimpleNamespace(preempted=True)
    os.makedirs(os.path.join(run_dir, 'export'), exist_ok=True)
    open(os.path.join(run_dir, 'export', 'config.json'), 'w').write('{}')
    json.dump({'step': int(config.train.num_steps)}, open(os.path.join(run_dir, 'results.json'), 'w'))
    return types.SimpleNamespace(preempted=False)
  return train


def test_finished_runs_are_skipped_and_a_preempted_run_stops_the_study(tmp_path):
  config = toy_study.get_config()
  config.study.runs = 'base,reward_model,ppo'
  chosen = runs.selected(config.study)
  calls = []
  _, stopped = runs.train_all(chosen, config, str(tmp_path), _fake_train(calls, preempt={'reward_model'}))
  assert calls == ['base', 'reward_model'] and stopped.preempted
  calls.clear()
  seconds, stopped = runs.train_all(chosen, config, str(tmp_path), _fake_train(calls))
  assert calls == ['reward_model', 'ppo'] and stopped is None and seconds['base'] == 0.0
  # More steps asked for than were trained: the run is not finished, it resumes.
  config.study.rl_num_steps = 61
  calls.clear()
  runs.train_all(chosen, config, str(tmp_path), _fake_train(calls))
  assert calls == ['ppo']


def test_every_run_and_model_of_the_study_keeps_the_last_layer_whole(tmp_path):
  """study.trim_last_layer (off) reaches every stage config, and from there every model a run
  builds, fresh or loaded (the figures stay bit for bit the published ones); a stage preset on
  its own keeps the default (on)."""
  import jax
  from configs import ppo
  from deepalign import models
  from deepalign.train import policy_init, stage_data
  config = toy_study.get_config()
  for run in runs.RUNS:
    assert runs.stage_config(run, config, str(tmp_path)).model.trim_last_layer is False
  config.study.trim_last_layer = True
  assert all(runs.stage_config(r, config, str(tmp_path)).model.trim_last_layer for r in runs.RUNS)
  stage = ppo.get_config('toy')
  assert stage.model.trim_last_layer is True
  stage.model.update({'trim_last_layer': False, 'init_from': ''})
  tokenizer = stage_data.load(stage).tokenizer
  model, init = policy_init.build(stage, tokenizer, head='score')  # fresh
  assert model.config.trim_last_layer is False
  models.save_pretrained(model, init(jax.random.key(0)), str(tmp_path / 'rm'))
  loaded, _ = policy_init.load_frozen(str(tmp_path / 'rm'), stage, 'float32')  # reward, judge
  assert loaded.config.trim_last_layer is False
  stage.model.init_from = str(tmp_path / 'rm')
  assert policy_init.build(stage, tokenizer, head='lm')[0].config.trim_last_layer is False
  stage.model.trim_last_layer = True
  assert policy_init.build(stage, tokenizer, head='lm')[0].config.trim_last_layer
  assert policy_init.load_frozen(str(tmp_path / 'rm'), stage, 'float32')[0].config.trim_last_layer
