"""The generation benchmarks (deepalign and transformers) time with `timing.time_calls`, as the PPO
and DPO benchmarks do, and report the same figures from it."""

import numpy as np
import pytest

from deepalign.benchmarks import generation, hf_generation, timing, w_tiny


@pytest.fixture
def timed(monkeypatch):
  """Records each time_calls' (iters, warmup) and Timings."""
  calls = []
  real = timing.time_calls

  def spy(call, iters, warmup):
    calls.append((iters, warmup, real(call, iters, warmup)))
    return calls[-1][2]

  monkeypatch.setattr(timing, 'time_calls', spy)
  return calls


@pytest.fixture
def prompts(tmp_path):
  path = tmp_path / 'p.npy'
  np.save(path, w_tiny.make_prompts())
  return str(path)


def _check_figures(result, timed, iters, warmup):
  (spied_iters, spied_warmup, timings), = timed
  assert (spied_iters, spied_warmup, len(timings.times)) == (iters, warmup, iters)
  assert result['median_s'] == timings.median and result['first_call_s'] == timings.first_call_s
  assert (result['min_s'], result['max_s']) == (min(timings.times), max(timings.times))
  assert result['cpu_median_s'] > 0
  assert result['tokens_per_s'] == pytest.approx(w_tiny.BATCH * w_tiny.NEW_TOKENS / timings.median)


@pytest.mark.slow  # compiles W-tiny sampling: ~10 s of CPU
def test_deepalign_generation_uses_time_calls(prompts, timed):
  result = generation.run(prompts, iters=2, warmup=1, seed=0)
  _check_figures(result, timed, iters=2, warmup=1)
  assert result['framework'] == 'deepalign (jax)' and 'load_avg_1m' in result
  assert result['seconds_at_peak'] < result['median_s'] and result['matmul_gflop'] > 10


def test_transformers_generation_uses_time_calls(prompts, timed):
  pytest.importorskip('transformers')
  result = hf_generation.run(prompts, iters=2, warmup=0, threads=0)
  _check_figures(result, timed, iters=2, warmup=0)
  assert result['framework'] == 'transformers (torch)'
