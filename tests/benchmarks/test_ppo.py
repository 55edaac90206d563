"""The W-tiny PPO benchmark: its config is W_TINY.md's, its pieces are the fused step's work,
and its CLI ends with the JSON line (tiny sizes; the W-tiny figures are in the README)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepalign.benchmarks import ppo, ppo_pieces, workload
from deepalign.train.rl.ppo_step import make_ppo_step

TINY = dict(batch=4, prompt_len=4, new_tokens=4, vocab=64, hidden=32, layers=1, heads=2,
            head_dim=16, intermediate=48)
TINY_FLAGS = [f'--{k}={v}' for k, v in TINY.items()]


def test_config_is_w_tiny_ppo_iteration():
  config = ppo.ppo_config()
  sampling = config.rollout.sampling
  assert (sampling.max_new_tokens, sampling.temperature, sampling.stop_at_eos) == (64, 1.0, False)
  assert (sampling.top_k, sampling.top_p, config.rollout.recovery_coef) == (0, 1.0, 0.0)
  assert config.rollout.logprobs_from_sampler  # W_TINY.md step 2 allows it
  assert (config.kl_coef, config.kl_estimator, config.kl_penalty_in) == (0.05, 'k1', 'reward')
  assert (config.gamma, config.lam, config.whiten_advantages, config.whiten_rewards) == (
      1.0, 0.95, True, False)
  assert (config.epochs, config.minibatches, config.clip_eps, config.value_clip_eps,
          config.vf_coef, config.entropy_coef) == (1, 2, 0.2, 0.2, 0.1, 0.0)
  models, _, _, state, batch = ppo.build(workload.Sizes(**TINY), seed=0)
  assert models.value is not None and models.value.config.head == 'value'
  assert models.reward.config.head == 'score'
  assert set(state.params) == {'policy', 'value'}  # AdamW over policy + value
  assert batch['prompt_tokens'].shape == (4, 4) and bool(jnp.all(batch['prompt_mask'] == 1))


def test_w_tiny_sizes_use_the_shared_prompts():
  sizes = workload.Sizes()
  assert sizes.is_w_tiny and sizes.model_overrides() == {}
  cfg = sizes.config('lm')
  assert (cfg.vocab_size, cfg.hidden_size, cfg.num_layers, cfg.intermediate_size) == (
      2048, 256, 4, 688)
  expected = np.random.default_rng(1234).integers(3, 2048, size=(16, 32), dtype=np.int64)
  np.testing.assert_array_equal(workload.prompts(sizes), expected)


def test_zero_judge_scores_every_episode_zero():
  out = ppo.ZeroJudge()({}, jnp.ones((5, 3), jnp.int32), jnp.ones((5, 3)), jnp.ones((5, 2)),
                        jnp.ones((5, 2)))
  np.testing.assert_array_equal(out['harm'], np.zeros(5))


@pytest.mark.slow  # compiles the fused step and the three pieces: ~30 s of CPU
def test_pieces_do_the_fused_steps_work():
  """Sample -> score -> update from the step's own keys gives the fused step's new params."""
  models, config, tx, state, batch = ppo.build(workload.Sizes(**TINY), seed=0)
  pieces = ppo_pieces.make_pieces(models, config, tx, n_ordinary=4)
  key_sample, key_shuffle = jax.random.split(jax.random.fold_in(state.rng, state.step))
  episodes = pieces.sample(state.params['policy'], batch, key_sample)
  data = pieces.score(state.params, state.frozen, state.kl_ctl.value, episodes)
  params, _, _ = pieces.update(state.params, state.opt_state, data, key_shuffle)
  params = jax.tree.map(np.asarray, params)
  before = jax.tree.map(np.asarray, state.params)
  fused, _ = make_ppo_step(models, config, tx)(state, batch)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               params, jax.tree.map(np.asarray, fused.params))
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), params, before)
  assert max(jax.tree.leaves(moved)) > 0  # an update really happened


def test_cli_last_line_is_the_json_result(capsys):
  assert ppo.main(TINY_FLAGS + ['--iters=2', '--warmup=1']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert 'separately-jitted' in lines[-2]
  result = json.loads(lines[-1])
  for key in ('seconds_per_iteration', 'tokens_per_second', 'peak_rss_mb', 'share_sample',
              'share_score', 'share_update', 'first_call_s', 'load_avg_1m', 'matmul_gflop',
              'achieved_gflops', 'matmul_peak_gflops', 'seconds_at_peak', 'update_gflops'):
    assert isinstance(result[key], float) and result[key] > 0, key
  assert result['workload'] == 'reduced' and result['iters'] == 2
  assert np.isclose(result['tokens_per_second'], 4 * 4 / result['seconds_per_iteration'])
  assert np.isclose(result['share_sample'] + result['share_score'] + result['share_update'], 1.0)
  assert result['iteration_min_s'] <= result['seconds_per_iteration'] <= result['iteration_max_s']
  assert np.isclose(result['achieved_gflops'] * result['seconds_per_iteration'],
                    result['matmul_gflop'])
  assert 'GFLOP/s' in lines[-3]


def test_cli_rejects_sizes_beyond_the_model(capsys):
  assert ppo.main(TINY_FLAGS[:2] + ['--prompt_len=200', '--new_tokens=64']) == 2
  assert '--prompt_len + --new_tokens' in capsys.readouterr().err
