"""Every mistake a user can make on an entry point is one `error:` line, exit status 2, no
traceback, and no change to anything on disk: each user file byte-identical, no workdir or data
dir left behind. The cases are the README's "Troubleshooting" list.

All cases run in one fresh Python that forks a child per command (tests/forked_runs.py), so
~45 command lines cost one interpreter start and one jax import.
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import shutil

import pytest

from configs import sft as sft_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location('forked_runs', ROOT / 'tests' / 'forked_runs.py')
forked_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(forked_runs)

LINREG = '--config=configs/linear_regression.py'
SFT = '--config=configs/sft.py:toy'
TINY_SFT = [SFT, '--config.data.language=tiny', '--config.data.num_train=32',
            '--config.data.num_eval=8', '--config.train.num_steps=2']
FIXTURE_LM = ROOT / 'tests' / 'fixtures' / 'hf' / 'llama3'


def _user_files(tmp: pathlib.Path) -> dict[str, str]:
  """The user's files and what they hold (sha256), dirs as 'dir'. A stage's log.txt is left out:
  a refused resume appends why to the run's log, by design."""
  out = {}
  for root, dirs, files in os.walk(tmp):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), tmp)] = 'dir'
    for f in files:
      if f == 'log.txt':
        continue
      path = os.path.join(root, f)
      with open(path, 'rb') as fh:
        out[os.path.relpath(path, tmp)] = hashlib.sha256(fh.read()).hexdigest()
  return out


def _model_dirs(tmp: pathlib.Path) -> dict[str, pathlib.Path]:
  """Broken copies of a tiny Llama checkpoint, one per way a download goes wrong."""
  dirs = {}

  def copy(name):
    dirs[name] = tmp / 'models' / name
    shutil.copytree(FIXTURE_LM, dirs[name], ignore=shutil.ignore_patterns('*.npy'))
    return dirs[name]

  copy('good')
  weights = copy('truncated') / 'model.safetensors'
  with open(weights, 'r+b') as f:
    f.truncate(os.path.getsize(weights) // 2)
  pickled = copy('pickle_only')
  (pickled / 'model.safetensors').rename(pickled / 'pytorch_model.bin')
  (copy('bad_json') / 'config.json').write_text('{"architectures": ["LlamaForCausalLM"], ')
  for name, change in [('unsupported', {'architectures': ['MambaForCausalLM'], 'model_type': 'mamba'}),
                       ('wrong_shape', {'intermediate_size': 80})]:
    config = copy(name) / 'config.json'
    config.write_text(json.dumps({**json.loads(config.read_text()), **change}))
  return dirs


def _main(*argv, workdir=None):
  return {'entry': 'deepalign.main', 'argv': [*argv] + ([f'--workdir={workdir}'] if workdir else [])}


def _cases(tmp: pathlib.Path) -> list[tuple[str, dict, tuple[str, ...]]]:
  """(name, command, fragments the error line must hold)."""
  m = _model_dirs(tmp)
  new = lambda name: tmp / 'runs' / name  # a workdir that must not appear
  a_file = tmp / 'notes.txt'
  a_file.write_text('my notes\n')
  other_stage = tmp / 'runs' / 'sft_run'
  other_stage.mkdir(parents=True)
  (other_stage / 'config.json').write_text(json.dumps({'stage': 'sft', 'model': {}}))
  other_arch = tmp / 'runs' / 'sft_wide'
  other_arch.mkdir(parents=True)
  wide = json.loads(sft_config.get_config('toy').to_json_best_effort())
  wide['model']['hidden_size'] = 128
  (other_arch / 'config.json').write_text(json.dumps(wide))
  damaged = tmp / 'runs' / 'damaged'
  damaged.mkdir(parents=True)
  (damaged / 'config.json').write_text('{"stage": "linear_regr')
  safety = '--config=configs/safety_eval.py'
  se_models = lambda spec: f'--config.eval.models={spec}'
  c = [
      # the command line itself
      ('unknown key', _main(LINREG, '--config.optimizer.learning_rat=3', workdir=new('a')),
       ("unknown config key 'optimizer.learning_rat'", 'optimizer.learning_rate')),
      ('wrong type', _main(LINREG, '--config.train.num_steps=ten', workdir=new('a')),
       ("config key 'train.num_steps'", 'int')),
      ('unknown preset', _main('--config=configs/sft.py:gemma9000', workdir=new('a')),
       ('unknown preset', 'toy')),
      ('missing config file', _main('--config=configs/nope.py', workdir=new('a')),
       ('configs/nope.py', 'not found')),
      ('no workdir', _main(LINREG), ('--workdir',)),
      ('stray argument', _main(LINREG, 'extra', workdir=new('a')), ('unexpected arguments',)),
      ('unknown stage', _main(LINREG, '--config.stage=pretrain', workdir=new('a')),
       ("config.stage='pretrain'", 'sft')),
      # the workdir
      ('workdir is a file', _main(LINREG, workdir=a_file), ('is a file, not a directory',)),
      ('workdir under a file', _main(LINREG, workdir=a_file / 'run'), ('is a file',)),
      ('workdir not writable', _main(LINREG, workdir='/proc/deepalign-run'), ('not writable',)),
      ('workdir of another stage', _main(LINREG, workdir=other_stage),
       ('holds a run of another stage', "stage: 'sft' -> 'linear_regression'",
        'allow_config_change=True')),
      ('workdir of another architecture', _main(*TINY_SFT, workdir=other_arch),
       ('another model architecture', 'model.hidden_size: 128 -> 64')),
      ('workdir with a damaged config.json', _main(LINREG, workdir=damaged),
       ('config.json is not a readable JSON config',)),
      # the loop's settings
      ('unknown schedule', _main(LINREG, '--config.optimizer.schedule=cosinus', workdir=new('a')),
       ("config.optimizer.schedule='cosinus'", 'cosine')),
      ('unknown optimizer', _main(LINREG, '--config.optimizer.name=lion', workdir=new('a')),
       ("config.optimizer.name='lion'", 'adamw')),
      ('negative num_steps', _main(LINREG, '--config.train.num_steps=-1', workdir=new('a')),
       ('config.train.num_steps=-1', '>= 0')),
      ('zero grad_accum_steps', _main(LINREG, '--config.optimizer.grad_accum_steps=0',
                                      workdir=new('a')), ('grad_accum_steps=0', '>= 1')),
      ('bad best_mode', _main(LINREG, '--config.train.best_mode=middle', workdir=new('a')),
       ("best_mode='middle'",)),
      ('negative max_bad_steps', _main(LINREG, '--config.train.max_bad_steps=-2', workdir=new('a')),
       ('max_bad_steps=-2',)),
      ('negative loss_spike_factor', _main(LINREG, '--config.train.loss_spike_factor=-1',
                                           workdir=new('a')), ('loss_spike_factor',)),
      # models
      ('missing hf_dir', _main('--config=configs/dpo.py:llama3_8b',
                               '--config.model.hf_dir=/nonexistent/llama', workdir=new('a')),
       ('config.model.hf_dir', '/nonexistent/llama')),
      ('missing init_from', _main('--config=configs/dpo.py:toy', '--config.model.init_from=/nope/sft',
                                  workdir=new('a')), ('config.model.init_from', '/nope/sft')),
      ('truncated safetensors', _main(*TINY_SFT, f'--config.model.hf_dir={m["truncated"]}',
                                      workdir=new('a')), ('model.safetensors', 'not a readable')),
      ('config.json not JSON', _main(*TINY_SFT, f'--config.model.hf_dir={m["bad_json"]}',
                                     workdir=new('a')), ('config.json', 'not valid JSON')),
      ('pickle-only checkpoint', _main(*TINY_SFT, f'--config.model.hf_dir={m["pickle_only"]}',
                                       workdir=new('a')), ('pickle',)),
      ('unsupported architecture', _main(*TINY_SFT, f'--config.model.hf_dir={m["unsupported"]}',
                                         workdir=new('a')), ('MambaForCausalLM', 'not supported')),
      ('tensor of the wrong shape', _main(*TINY_SFT, f'--config.model.hf_dir={m["wrong_shape"]}',
                                          workdir=new('a')), ('has shape', 'config.json implies')),
      ('reward model not named', _main('--config=configs/ppo.py:toy', f'--config.model.init_from={m["good"]}',
                                       "--config.rl.reward_from=''", workdir=new('a')),
       ('config.rl.reward_from',)),
      # data
      ('unknown language', _main(*TINY_SFT[:1], '--config.data.language=klingon', workdir=new('a')),
       ('klingon',)),
      ('unknown data source', _main(SFT, '--config.data.source=csv', workdir=new('a')), ('csv',)),
      ('missing tokenizer dir', _main(SFT, '--config.data.source=tfds',
                                      '--config.data.builder=sft_conversations',
                                      '--config.data.tokenizer_dir=/nope/tok', workdir=new('a')),
       ('/nope/tok',)),
      # the safety evaluation
      ('eval models malformed', _main(safety, se_models('base'), workdir=new('se')),
       ("'base' is not name=DIR",)),
      ('eval model truncated', _main(safety, se_models(f'base={m["good"]},bad={m["truncated"]}'),
                                     '--config.eval.judge=keywords', workdir=new('se')),
       ('model.safetensors', 'not a readable')),
      ('eval model config not JSON', _main(safety, se_models(f'bad={m["bad_json"]}'),
                                           '--config.eval.judge=keywords', workdir=new('se')),
       ('not valid JSON',)),
      ('eval model wrong shape', _main(safety, se_models(f'bad={m["wrong_shape"]}'),
                                       '--config.eval.judge=keywords', workdir=new('se')),
       ('has shape',)),
      ('eval model unsupported', _main(safety, se_models(f'bad={m["unsupported"]}'),
                                       '--config.eval.judge=keywords', workdir=new('se')),
       ('not supported',)),
      ('eval judge unknown', _main(safety, se_models(f'base={m["good"]}'), '--config.eval.judge=gpt5',
                                   workdir=new('se')), ("config.eval.judge='gpt5'",)),
      ('eval reference unknown', _main(safety, se_models(f'base={m["good"]}'),
                                       '--config.eval.reference=other', '--config.eval.judge=keywords',
                                       workdir=new('se')), ("config.eval.reference='other'",)),
      # the toy study
      ('study runs unknown', _main('--config=configs/toy_study.py', '--config.study.runs=base,rlhf',
                                   workdir=new('study')), ('config.study.runs', 'rlhf')),
      # data preparation
      ('prepare: unknown dataset', {'entry': 'deepalign.data.builders.prepare_main',
                                    'argv': ['--dataset=nope', f'--data_dir={new("tfds")}']},
       ('--dataset=nope',)),
      ('prepare: unknown config', {'entry': 'deepalign.data.builders.prepare_main',
                                   'argv': ['--dataset=harm_language', '--config=huge',
                                            f'--data_dir={new("tfds")}']}, ('--config=huge',)),
      ('prepare: missing release files', {'entry': 'deepalign.data.builders.prepare_main',
                                          'argv': ['--dataset=hh_rlhf', '--manual_dir=/nope/hh',
                                                   f'--data_dir={new("tfds")}']}, ('/nope/hh',)),
      # benchmarks
      ('benchmark: zero batch', {'entry': 'deepalign.benchmarks.ppo', 'argv': ['--batch=0']},
       ('--batch=0', 'positive')),
      ('benchmark: tiny vocabulary', {'entry': 'deepalign.benchmarks.dpo', 'argv': ['--vocab=2']},
       ('--vocab=2',)),
      ('benchmark: too long', {'entry': 'deepalign.benchmarks.ppo',
                               'argv': ['--prompt_len=200', '--new_tokens=200']}, ('exceeds',)),
      ('benchmark: missing prompts file', {'entry': 'deepalign.benchmarks.generation',
                                           'argv': ['--prompts=/nope/prompts.npy']},
       ('/nope/prompts.npy',)),
  ]
  return c


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('user')
  cases = _cases(tmp)
  before = _user_files(tmp)
  results = forked_runs.run([command for _, command, _ in cases], timeout=900)
  return {name: (result, fragments) for (name, _, fragments), result in zip(cases, results)}, \
      before, _user_files(tmp)


def test_there_are_at_least_thirty_cases(outcomes):
  assert len(outcomes[0]) >= 30


def test_each_is_one_error_line_and_exit_status_2(outcomes):
  failures = []
  for name, (result, fragments) in outcomes[0].items():
    stderr = result['stderr']
    errors = [l for l in stderr.splitlines() if l.startswith('error: ')]
    problems = []
    if result['rc'] != 2:
      problems.append(f'exit {result["rc"]}')
    if len(errors) != 1:
      problems.append(f'{len(errors)} error lines')
    if 'Traceback' in stderr:
      problems.append('a traceback')
    missing = [f for f in fragments if errors and f not in errors[0]]
    if missing:
      problems.append(f'no {missing}')
    if problems:
      failures.append(f'{name}: {", ".join(problems)}\n{stderr[-1500:]}')
  assert not failures, '\n\n'.join(failures)


def test_nothing_on_disk_changed(outcomes):
  _, before, after = outcomes
  added = sorted(set(after) - set(before))
  changed = sorted(k for k in before if after.get(k) != before[k])
  assert not added and not changed, f'added {added}, changed or removed {changed}'
