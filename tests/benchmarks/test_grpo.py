"""The W-tiny GRPO benchmark: its config is the issue's GRPO step (4 prompts x group 4, 64 tokens
that EOS does not stop, k3 KL beta 0.04 in the loss, clip 0.2, one update, AdamW 1e-5), the step
it times updates the policy, and its CLI ends with the JSON line (tiny sizes)."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.benchmarks import grpo, workload
from deepalign.train.rl import episodes as rl_episodes

TINY = dict(batch=8, prompt_len=4, new_tokens=4, vocab=64, hidden=32, layers=1, heads=2,
            head_dim=16, intermediate=48)
TINY_FLAGS = [f'--{k}={v}' for k, v in TINY.items()]


def test_config_is_the_w_tiny_grpo_step():
  config = grpo.grpo_config()
  sampling = config.rollout.sampling
  assert (sampling.max_new_tokens, sampling.temperature, sampling.stop_at_eos) == (64, 1.0, False)
  assert (sampling.top_k, sampling.top_p, config.rollout.recovery_coef) == (0, 1.0, 0.0)
  assert config.rollout.group_size == 4 and config.rollout.logprobs_from_sampler
  assert (config.beta, config.clip_eps, config.epochs, config.minibatches) == (0.04, 0.2, 1, 1)
  assert grpo.num_prompts(workload.Sizes()) == 4  # 16 rollouts = 4 prompts x 4
  models, _, _, state, batch = grpo.build(workload.Sizes(**TINY), seed=0)
  assert models.value is None and set(state.params) == {'policy'}
  assert batch['prompt_tokens'].shape == (2, 4)


def test_the_timed_step_moves_the_policy_and_samples_every_token():
  models, config, tx, state, batch = grpo.build(workload.Sizes(**TINY), seed=0)
  before = jax.tree.map(np.asarray, state.params)
  new_state, metrics = grpo.make_grpo_step(models, config, tx)(state, batch)
  assert float(metrics['response/length_mean']) == TINY['new_tokens']
  moved = jax.tree.map(lambda a, b: np.abs(np.asarray(a) - b).max(), new_state.params, before)
  assert max(jax.tree.leaves(moved)) > 0


def test_cli_last_line_is_the_json_result(capsys):
  assert grpo.main(TINY_FLAGS + ['--iters=2', '--warmup=1']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  for key in ('seconds_per_step', 'tokens_per_second', 'peak_rss_mb', 'matmul_gflop',
              'achieved_gflops', 'matmul_peak_gflops', 'seconds_at_peak', 'first_call_s'):
    assert isinstance(result[key], float) and result[key] > 0, key
  assert result['workload'] == 'reduced' and (result['prompts'], result['group_size']) == (2, 4)
  assert np.isclose(result['tokens_per_second'], 8 * 4 / result['seconds_per_step'])
  assert 'GRPO step' in lines[-3] and 'GFLOP/s' in lines[-2]


def test_cli_rejects_a_batch_that_is_not_whole_groups(capsys):
  assert grpo.main(TINY_FLAGS[1:] + ['--batch=6']) == 2
  assert 'multiple of the group size' in capsys.readouterr().err


def test_update_count_matches_xla_cost_analysis():
  """step_flops' update piece is one policy forward + backward over the rollouts: check it
  against XLA's count of exactly that program (XLA adds elementwise work: a few % above)."""
  sizes = workload.Sizes(batch=4, prompt_len=24, new_tokens=8, vocab=512, hidden=128, layers=2,
                         heads=4, head_dim=32, intermediate=344)
  models, _, _, state, _ = grpo.build(sizes, seed=0)
  policy = models.policy
  n = sizes.new_tokens
  tokens = jnp.ones((sizes.batch, sizes.prompt_len + n), jnp.int32)

  def loss(params):  # the group's prompt once (`rl_episodes.sequence_hidden`, as the step runs it)
    # ... and the positions predicting the response read (`rl_episodes.response_hidden`)
    hidden = rl_episodes.sequence_hidden(policy, params, tokens, jnp.ones_like(tokens),
                                         sizes.prompt_len, grpo.GROUP_SIZE,
                                         read=slice(sizes.prompt_len - 1, -1))
    return jnp.sum(policy.apply({'params': params}, hidden, method=type(policy).logits))

  cost = jax.jit(jax.grad(loss)).lower(state.params['policy']).compile().cost_analysis()
  xla = float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])
  ours = grpo.step_flops(sizes)['update']
  assert 0.97 * ours <= xla <= 1.06 * ours
