"""The side-by-side benchmark at tiny sizes, one round, one timed call per contender: its table
and JSON line for the deepalign rows (always; CI has no torch), the peers' rows where the `hf`
extra is installed, and a clear note where it is not. The W-tiny figures are in the README."""

import builtins
import json

import numpy as np
import pytest

from deepalign.benchmarks import compare

TINY = dict(batch=8, prompt_len=4, new_tokens=4, vocab=64, hidden=32, layers=1, heads=2,
            head_dim=16, intermediate=48)
TINY_FLAGS = [f'--{k}={v}' for k, v in TINY.items()] + ['--rounds=1', '--iters=1',
                                                        '--warmup=1']


def _has(*modules: str) -> bool:
  try:
    for module in modules:
      __import__(module)
  except ImportError:
    return False
  return True


@pytest.fixture(scope='module')
def output():
  """One compare run (every work; the peers too where they import): stdout lines, JSON."""
  import contextlib
  import io
  buffer = io.StringIO()
  real_peak = compare.matmul_work.measure_matmul_peak
  with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(buffer):
    # A 512^2 peak: the 2048^2 one costs seconds of a test that checks the wiring, not the rate.
    patch.setattr(compare.matmul_work, 'measure_matmul_peak', lambda: real_peak(size=512))
    assert compare.main(TINY_FLAGS) == 0
  lines = buffer.getvalue().strip().splitlines()
  return lines, json.loads(lines[-1])


def test_every_work_has_a_deepalign_row_with_its_share_of_the_peak(output):
  lines, result = output
  assert result['benchmark'] == 'w_tiny_compare' and result['workload'] == 'reduced'
  assert set(result['results']) == set(compare.WORKS)
  assert result['matmul_peak_gflops'] > 0 and len(result['matmul_peak_per_round_gflops']) == 1
  assert result['matmul_peak_size'] == 512
  for work, entries in result['results'].items():
    mine = entries['deepalign']
    assert mine['calls'] == 1 and mine['median_s'] > 0, work
    assert 0 < mine['fraction_of_peak'] and mine['matmul_peak_gflops'] == result['matmul_peak_gflops']
    assert np.isclose(mine['achieved_gflops'], mine['matmul_gflop'] / mine['median_s'])
  table = [line for line in lines if line.startswith('| ')]
  assert table[0].startswith('| work | implementation | median s')
  for label in compare.LABELS.values():
    assert any(line.startswith(f'| {label} | deepalign |') for line in table), label


@pytest.mark.skipif(not _has('torch', 'transformers'), reason='the hf extra is not installed')
def test_peers_run_the_same_work_when_installed(output):
  _, result = output
  results = result['results']
  for work in ('ppo', 'dpo', 'generation'):
    peer = results[work]['torch']
    assert peer['median_s'] > 0 and np.isclose(
        peer['ratio_to_deepalign'], peer['median_s'] / results[work]['deepalign']['median_s'])
  assert result['torch_version'].startswith('2.13')
  if _has('trl'):
    assert {'trl'} <= set(results['dpo']) and {'trl'} <= set(results['grpo'])
    assert 'PPOTrainer' in result['notes'].get('trl_ppo', 'PPOTrainer')


def test_missing_peers_are_named_not_fatal(monkeypatch):
  real_import = builtins.__import__

  def no_torch(name, *args, **kwargs):
    if name.split('.')[0] in ('torch', 'transformers', 'trl'):
      raise ImportError(f'No module named {name!r}')
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, '__import__', no_torch)
  for module in ('deepalign.benchmarks.peers_torch', 'deepalign.benchmarks.peers_trl'):
    monkeypatch.delitem(__import__('sys').modules, module, raising=False)
  peers, missing = compare.import_peers('auto')
  assert peers == {}
  assert 'pip install -e ".[hf]"' in missing['torch'] and 'trl' in missing
  assert compare.import_peers('none') == ({}, {'torch': 'not run (--peers=none)',
                                               'trl': 'not run (--peers=none)'})


def test_format_table_prints_the_notes_and_ratios():
  entry = dict(label='deepalign', median_s=1.0, round_medians_s=[1.0], fraction_of_peak=0.4,
               achieved_gflops=80.0, matmul_gflop=80.0, seconds_at_peak=0.4)
  result = dict(workload='w_tiny', rounds=1, device='cpu', cpu_count=2, load_avg_1m=0.1,
                matmul_peak_gflops=200.0, matmul_peak_size=2048,
                notes={'torch': 'not run: torch and transformers not importable'},
                results={'dpo': {'deepalign': entry,
                                 'trl': dict(label='TRL DPOTrainer', median_s=1.5,
                                             round_medians_s=[1.5], ratio_to_deepalign=1.5)}})
  table = compare.format_table(result)
  assert 'note: torch: not run' in table
  assert '| DPO step | deepalign | 1.000 | 1.000 | 1 | 40% (80 GFLOP/s' in table
  assert '|  | TRL DPOTrainer | 1.500 | 1.500 | 1.50x |  |' in table


@pytest.mark.parametrize('flags, message', [(['--rounds=0'], '--rounds'),
                                            (['--work=ppo,sft'], '--work'),
                                            (['--batch=6', '--work=grpo'], 'group size')])
def test_cli_rejects_bad_flags_before_building(capsys, flags, message):
  assert compare.main(TINY_FLAGS + flags) == 2
  assert message in capsys.readouterr().err


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  """deepalign's initial policy / value / reward at the tiny sizes, exported for the peers."""
  sizes = compare.workload.Sizes(**TINY)
  params = compare.ppo.initial_params(sizes, 0)
  return sizes, compare.export_weights(sizes, params, str(tmp_path_factory.mktemp('weights')))


@pytest.mark.skipif(not _has('torch', 'transformers'), reason='the hf extra is not installed')
def test_torch_peer_does_deepalign_math_on_the_same_weights(exported):
  """Both sides start from one set of weights and score the same tokens: the torch DPO step's
  summed response log-probs and the PPO pieces (response log-probs, values at the predicting
  positions, reward at the last position) equal deepalign's."""
  import jax
  import jax.numpy as jnp
  import torch
  from deepalign import models
  from deepalign.benchmarks import peers_torch
  from deepalign.objectives import sequence_logprobs
  from deepalign.train import pair_rows
  from deepalign.train.sequence_logprobs import target_logprobs

  sizes, dirs = exported
  p = sizes.prompt_len
  pairs = compare.dpo_pairs(sizes, None)
  policy = models.Transformer(sizes.config('lm'))
  params = models.init_params(policy, jax.random.key(0))
  lp, mask = jax.jit(lambda b: target_logprobs(policy, params, pair_rows.stack(b)))(pairs)
  torch_dpo = peers_torch.TorchDPO(dirs, pairs, p)
  with torch.no_grad():
    ours = torch_dpo.sequence_logprobs(torch_dpo.policy).numpy()
  np.testing.assert_allclose(ours, sequence_logprobs(lp, mask), rtol=1e-4, atol=1e-4)
  assert np.isclose(torch_dpo.step(), np.log(2.0), rtol=1e-5)  # policy == reference at step 0

  tokens = pairs['chosen_tokens']
  rows = torch.tensor(tokens, dtype=torch.long)

  def apply(head: str, seed: int) -> np.ndarray:
    model = models.Transformer(sizes.config(head))
    params = models.init_params(model, jax.random.key(seed))
    return np.asarray(jax.jit(model.apply)({'params': params}, jnp.asarray(tokens)))

  log_probs = np.asarray(jax.nn.log_softmax(apply('lm', 0)[:, p - 1:-1]))
  expected = np.take_along_axis(log_probs, tokens[:, p:, None], -1)[..., 0]
  value, reward = peers_torch.load_scalar(dirs['value']), peers_torch.load_scalar(dirs['reward'])
  with torch.no_grad():
    np.testing.assert_allclose(peers_torch.response_logprobs(torch_dpo.reference, rows, p).numpy(),
                               expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(peers_torch.response_values(value, rows, p).numpy(),
                               apply('value', 1)[:, p - 1:-1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(peers_torch.reward_scores(reward, rows).numpy(), apply('score', 2),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not _has('torch', 'transformers', 'trl'), reason='trl is not installed')
def test_trl_tokenizer_round_trips_the_ids():
  from deepalign.benchmarks import peers_trl
  tokenizer = peers_trl.id_tokenizer(64)
  ids = [5, 63, 0, 1, 2, 17, 2]
  assert tokenizer(peers_trl.text(ids))['input_ids'] == ids
  assert tokenizer(peers_trl.text(ids[:3]) + ' ' + peers_trl.text(ids[3:]))['input_ids'] == ids
