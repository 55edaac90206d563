"""The W-tiny DPO benchmark: its pairs are W_TINY.md's, its loss starts at log 2, and its CLI
ends with the JSON line (tiny sizes; the W-tiny figures are in the README)."""

import json

import jax
import numpy as np

from deepalign.benchmarks import dpo, w_tiny, workload
from deepalign.models.transformer import Transformer, init_params

TINY = dict(batch=4, prompt_len=4, new_tokens=5, vocab=64, hidden=32, layers=1, heads=2,
            head_dim=16, intermediate=48)


def test_pairs_are_w_tiny_pairs():
  prompts = w_tiny.make_prompts()
  batch = dpo.pair_batch(prompts, 64, 2048)
  responses = np.random.default_rng(4321).integers(3, 2048, size=(2, 16, 63))
  for i, name in enumerate(('chosen', 'rejected')):
    tokens = batch[f'{name}_tokens']
    assert tokens.shape == (16, 96)
    np.testing.assert_array_equal(tokens[:, :32], prompts)
    np.testing.assert_array_equal(tokens[:, 32:95], responses[i])
    assert np.all(tokens[:, 95] == w_tiny.EOS_ID)
    # target_logprobs reads loss_mask[:, 1:]: exactly the 64 response tokens count.
    assert np.all(batch[f'{name}_loss_mask'][:, 1:].sum(axis=1) == 64)
    assert np.all(batch[f'{name}_loss_mask'][:, 32] == 1)
    assert np.all(batch[f'{name}_loss_mask'][:, 31] == 0)


def test_loss_is_log_two_when_policy_is_reference():
  sizes = workload.Sizes(**TINY)
  model = Transformer(sizes.config('lm'))
  params = init_params(model, jax.random.key(0))
  batch = dpo.pair_batch(workload.prompts(sizes), sizes.new_tokens, sizes.vocab)
  loss, metrics = jax.jit(dpo.make_loss(model))(params, params, batch, None)
  np.testing.assert_allclose(loss, np.log(2.0), rtol=1e-6)
  assert metrics['logps/chosen'] < 0


def test_cli_last_line_is_the_json_result(capsys):
  flags = [f'--{k}={v}' for k, v in TINY.items()]
  assert dpo.main(flags + ['--iters=3', '--warmup=1']) == 0
  result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  for key in ('seconds_per_step', 'peak_rss_mb', 'first_call_s', 'loss', 'matmul_gflop',
              'achieved_gflops', 'matmul_peak_gflops', 'seconds_at_peak'):
    assert isinstance(result[key], float) and result[key] > 0, key
  assert result['workload'] == 'reduced' and (result['rows'], result['seq_len']) == (8, 9)
  assert result['step_min_s'] <= result['seconds_per_step'] <= result['step_max_s']
  # Three AdamW steps on fixed pairs move the policy off the reference: the loss falls below log 2.
  assert result['loss'] < np.log(2.0)


def test_cli_rejects_a_bad_size(capsys):
  assert dpo.main(['--vocab=2']) == 2
  assert '--vocab' in capsys.readouterr().err
