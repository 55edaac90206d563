"""W-tiny "One PPO iteration" (shared/W_TINY.md), run through the fused `make_ppo_step`.

  python -m deepalign.benchmarks.ppo [--iters=7] [--warmup=2] [--prompts=PATH] [--no_pieces]

One iteration: 16 prompts x 32 tokens -> 64 sampled tokens (temperature 1, EOS does not stop),
reward model (score at the last position), reference / value forwards (the rollout log-probs
come from the sampler, as W_TINY.md allows), k1 KL (coef 0.05) in the reward, GAE (gamma 1,
lambda 0.95), whitened advantages, 1 epoch x 2 minibatches of clipped policy (0.2) + clipped
value (0.2, vf_coef 0.1) updates with AdamW (lr 1e-5) over policy + value. No recovery rollouts. W-tiny has no harm judge: `ZeroJudge` returns h = 0.

Reports the median seconds/iteration of the fused step, generated tokens/s (B * N / median),
peak RSS, and the share of time in sampling / scoring (+ forwards) / update, measured on
separately-jitted pieces (`ppo_pieces.py`); and the iteration's matmul work
(`matmul_work.py`): GFLOP, the rate reached, this machine's measured float32 matmul peak and the
seconds the work would take at it (`seconds_at_peak`, a floor for any implementation here).
Size flags (--batch, --hidden, ...) shrink the workload for smoke tests; the last printed line
is one JSON object.
"""

import argparse
import dataclasses
import statistics
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepalign.benchmarks import matmul_work, ppo_pieces, timing, w_tiny, workload
from deepalign.models.transformer import Transformer, init_params
from deepalign.train.rl.ppo_step import PPOConfig, make_ppo_step
from deepalign.train.rl.episodes import RolloutSpec
from deepalign.train.rl.state import RLModels, RLState

PyTree = Any
LEARNING_RATE = 1e-5


@dataclasses.dataclass(frozen=True)
class ZeroJudge:
  """W-tiny has no harm judge: h = 0 for every episode (RLModels requires a judge; with
  recovery_coef = 0 its output only reaches the metrics)."""

  def __call__(self, params: PyTree, prompt: jax.Array, prompt_mask: jax.Array,
               response: jax.Array, response_mask: jax.Array) -> dict[str, jax.Array]:
    del params, prompt_mask, response, response_mask
    return {'harm': jnp.zeros((prompt.shape[0],), jnp.float32)}


def ppo_config(new_tokens: int = w_tiny.NEW_TOKENS) -> PPOConfig:
  """W_TINY.md's PPO iteration as a PPOConfig (spelled out, not left to the defaults)."""
  # W_TINY.md allows the rollout log-probs to come from the sampler: it saves a policy forward.
  rollout = RolloutSpec(sampling=w_tiny.sampling_config(new_tokens), recovery_coef=0.0, logprobs_from_sampler=True)
  return PPOConfig(rollout=rollout, kl_coef=0.05,
                   kl_estimator='k1', kl_penalty_in='reward', gamma=1.0, lam=0.95,
                   whiten_rewards=False, whiten_advantages=True, epochs=1, minibatches=2,
                   clip_eps=0.2, value_clip_eps=0.2, vf_coef=0.1, entropy_coef=0.0,
                   aggregation='token_mean')


def optimizer() -> optax.GradientTransformation:
  """AdamW over policy + value, no clipping, no schedule (W_TINY.md)."""
  return optax.adamw(LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)


SEEDS = {'lm': w_tiny.POLICY_SEED, 'value': w_tiny.VALUE_SEED, 'score': w_tiny.REWARD_SEED}


def initial_params(sizes: workload.Sizes, seed: int, heads: tuple[str, ...] = tuple(SEEDS)
                   ) -> dict[str, PyTree]:
  """Fresh params of the policy ('lm'), value and reward ('score') models with W_TINY.md's HF
  init seeds (policy 0, value 1, reward 2), offset by `seed`."""
  return {head: init_params(Transformer(sizes.config(head)), jax.random.key(seed + SEEDS[head]))
          for head in heads}


def build(sizes: workload.Sizes, seed: int, prompts_path: str | None = None,
          params: Mapping[str, PyTree] | None = None
          ) -> tuple[RLModels, PPOConfig, optax.GradientTransformation, RLState, dict]:
  """Models, config, optimizer, the initial RLState and the prompt batch of the workload.

  `params` ({'lm', 'value', 'score'}: the initial params, e.g. shared with another benchmark
  in the process; the step donates them) defaults to `initial_params(sizes, seed)`."""
  policy = Transformer(sizes.config('lm'))
  value = Transformer(sizes.config('value'))
  reward = Transformer(sizes.config('score'))
  params = initial_params(sizes, seed) if params is None else params
  policy_params, value_params, reward_params = params['lm'], params['value'], params['score']
  models = RLModels(policy=policy, reward=reward, judge=ZeroJudge(), value=value)
  config, tx = ppo_config(sizes.new_tokens), optimizer()
  state = RLState.create(policy=policy_params, reference=policy_params, reward=reward_params,
                         judge={}, tx=tx, rng=jax.random.key(seed + 3), kl_coef=config.kl_coef,
                         value=value_params)
  prompts = workload.prompts(sizes, prompts_path)
  batch = {'prompt_tokens': jnp.asarray(prompts), 'prompt_mask': jnp.ones_like(prompts),
           'is_harmful': jnp.zeros((prompts.shape[0],), bool)}
  return models, config, tx, state, batch


def _check_metrics(metrics: Mapping[str, jax.Array], new_tokens: int) -> None:
  """The timed work is the work W-tiny defines: N tokens per row, finite losses."""
  length = float(metrics['response/length_mean'])
  if length != new_tokens:
    raise RuntimeError(f'expected {new_tokens} response tokens per row, got {length}')
  bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
  if bad:
    raise RuntimeError(f'non-finite PPO metrics: {bad}')


def time_pieces(models: RLModels, config: PPOConfig, tx: optax.GradientTransformation,
                state: RLState, batch: dict, iters: int, warmup: int,
                flops: Mapping[str, float]) -> dict[str, Any]:
  """Median seconds of each separately-jitted piece, its share of their sum (wall and CPU),
  and the matmul rate it reached (`flops`: matmul FLOPs per piece)."""
  pieces = ppo_pieces.make_pieces(models, config, tx, batch['prompt_tokens'].shape[0])
  key = jax.random.key(12345)
  episodes, data = ppo_pieces.piece_inputs(pieces, state, batch, key)
  params, frozen, kl_coef = state.params, state.frozen, state.kl_ctl.value
  runs = {
      'sample': lambda i: pieces.sample(params['policy'], batch, jax.random.fold_in(key, i)),
      'score': lambda i: pieces.score(params, frozen, kl_coef, episodes),
      'update': lambda i: pieces.update(params, state.opt_state, data, jax.random.fold_in(key, i)),
  }
  timed = {name: timing.time_calls(run, iters, warmup) for name, run in runs.items()}
  medians = {name: t.median for name, t in timed.items()}
  cpu = {name: statistics.median(t.cpu_times) for name, t in timed.items()}
  total, cpu_total = sum(medians.values()), sum(cpu.values())
  out = {f'{name}_s': s for name, s in medians.items()}
  out.update({f'share_{name}': s / total for name, s in medians.items()})
  out['pieces_sum_s'] = total
  out.update({f'{name}_gflops': flops[name] / 1e9 / s for name, s in medians.items()})
  out.update({f'{name}_cpu_s': s for name, s in cpu.items()})
  # CPU-time shares resist the load of other jobs on a shared machine better than wall shares.
  out.update({f'cpu_share_{name}': s / cpu_total for name, s in cpu.items()})
  return out


def run(sizes: workload.Sizes, iters: int = 7, warmup: int = 2, seed: int = 0,
        prompts_path: str | None = None, pieces: bool = True) -> dict[str, Any]:
  """Times the fused PPO step (and, if `pieces`, its separately-jitted pieces)."""
  peak = matmul_work.measure_matmul_peak()  # first, before this process holds other programs
  models, config, tx, state, batch = build(sizes, seed, prompts_path)
  step = make_ppo_step(models, config, tx)
  timings, state, metrics = timing.time_state_steps(step, state, (batch,), iters, warmup)
  _check_metrics(metrics, sizes.new_tokens)
  median = timings.median
  flops = matmul_work.ppo_iteration_flops(sizes, config.rollout.logprobs_from_sampler,
                                          config.epochs)
  result = {
      'benchmark': 'w_tiny_ppo_iteration', **timing.environment(), **sizes.describe(),
      'iters': iters, 'warmup': warmup,
      'seconds_per_iteration': median,
      'tokens_per_second': sizes.batch * sizes.new_tokens / median,
      **timings.summary('iteration'),
      'first_call_s': timings.first_call_s,
      **matmul_work.work_figures(flops['total'], median, peak),
  }
  if pieces:
    result.update(time_pieces(models, config, tx, state, batch, iters, warmup, flops))
    result['shares_from'] = ('separately-jitted pieces: sample_episodes; reward/judge + '
                             'old/ref/value forwards + GAE; minibatch updates')
  result['peak_rss_mb'] = timing.peak_rss_mb()
  return result


def format_summary(result: Mapping[str, Any]) -> str:
  """The human-readable lines printed before the JSON."""
  lines = [f'deepalign PPO iteration ({result["workload"]}): '
           f'{result["seconds_per_iteration"]:.4f} s/iteration (median of {result["iters"]} '
           f'after {result["warmup"]} warm-ups), {result["tokens_per_second"]:.0f} generated '
           f'tokens/s, {result["iteration_cpu_median_s"]:.3f} CPU-s/iteration, peak RSS '
           f'{result["peak_rss_mb"]:.0f} MB, first call {result["first_call_s"]:.1f} s, '
           f'load {result["load_avg_1m"]}',
           matmul_work.format_work(result)]
  if 'share_sample' in result:
    lines.append(
        'shares (from separately-jitted pieces, of their sum '
        f'{result["pieces_sum_s"]:.4f} s): sampling {result["share_sample"]:.0%} '
        f'({result["sample_s"]:.4f} s), scoring + forwards {result["share_score"]:.0%} '
        f'({result["score_s"]:.4f} s), update {result["share_update"]:.0%} '
        f'({result["update_s"]:.4f} s); matmul rates {result["sample_gflops"]:.0f} / '
        f'{result["score_gflops"]:.0f} / {result["update_gflops"]:.0f} GFLOP/s; CPU-time shares {result["cpu_share_sample"]:.0%} / '
        f'{result["cpu_share_score"]:.0%} / {result["cpu_share_update"]:.0%}')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m deepalign.benchmarks.ppo',
                                   description=__doc__.split('\n')[0])
  workload.add_arguments(parser, iters=7, warmup=2)
  parser.add_argument('--no_pieces', action='store_true',
                      help='skip timing the separately-jitted pieces (no shares)')
  args = parser.parse_args(argv)
  return workload.report(lambda: run(workload.sizes_from_args(args), args.iters, args.warmup,
                                     args.seed, args.prompts, pieces=not args.no_pieces),
                         format_summary)


if __name__ == '__main__':
  sys.exit(main())
