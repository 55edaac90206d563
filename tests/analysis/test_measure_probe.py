"""The analysis probe (deepalign/study/measure.make_probe): any number of held-out prompts, and
a clear UserError (not an IndexError) when the counts cannot be met."""

import numpy as np
import pytest

from configs import toy_study
from deepalign.errors import UserError
from deepalign.study import measure, runs
from deepalign.train import stage_data


@pytest.fixture(scope='module')
def setup():
  config = toy_study.get_config()
  base = runs.stage_config(runs.BY_NAME['base'], config, '/nonexistent/toy')
  return config, base, stage_data.load(base)


def _analysis(config, n_harmful: int, n_benign: int):
  a = config.analysis.copy_and_resolve_references()
  a.num_harmful_prompts, a.num_benign_prompts = n_harmful, n_benign
  a.martingale_responses = a.gradient_responses = a.grad_groups = max(min(n_harmful, 4), 1)
  return a


@pytest.mark.parametrize('n_harmful, n_benign', [(16, 16), (1, 3), (40, 7)])
def test_fewer_than_a_batch_of_prompts_gives_exactly_the_counts_asked_for(setup, n_harmful, n_benign):
  # 2 x 16 = 32 records made no whole batch of 64: IndexError; 2 x 40 = 80 made one, 34 harmful.
  config, base, data = setup
  probe = measure.make_probe(data.env, data.tokenizer, data.template, base,
                             _analysis(config, n_harmful, n_benign))
  assert probe.harmful['prompt_tokens'].shape[0] == n_harmful == len(probe.harmful_len)
  assert probe.benign['prompt_tokens'].shape[0] == n_benign
  assert probe.harmful_tokens.shape == (n_harmful, int(config.analysis.response_len))
  assert np.all(probe.harmful_len > 0)


def test_counts_that_cannot_be_met_are_user_errors(setup):
  config, base, data = setup
  with pytest.raises(UserError, match='num_harmful_prompts=0'):
    measure.make_probe(data.env, data.tokenizer, data.template, base, _analysis(config, 0, 8))
  short = base.copy_and_resolve_references()
  short.data.max_prompt_len, short.data.overflow = 2, 'drop'  # every prompt is dropped
  with pytest.raises(UserError, match='max_prompt_len=2'):
    measure.make_probe(data.env, data.tokenizer, data.template, short, _analysis(config, 8, 8))


def test_the_study_checks_the_sizes_before_it_trains(tmp_path):
  from deepalign.study import toy_study as study
  config = toy_study.get_config()
  config.analysis.num_harmful_prompts = 0
  with pytest.raises(UserError, match='num_harmful_prompts=0'):
    study.run(config, str(tmp_path / 'toy'))
  assert not (tmp_path / 'toy').exists()  # nothing trained, nothing written
