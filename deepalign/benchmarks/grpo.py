"""W-tiny "One GRPO step", run through the fused `make_grpo_step`.

  python -m deepalign.benchmarks.grpo [--iters=7] [--warmup=2] [--prompts=PATH]

One step: 4 prompts x group 4 = 16 rollouts of the W-tiny policy (the first 4 rows of
W_TINY_prompts.npy, 32 tokens each) of exactly 64 sampled tokens (temperature 1, EOS does not
stop), scored by the W-tiny reward model (score at the last position), group-relative
advantages (sample std, as TRL), the reference forward for the k3 KL (beta 0.04) in the loss,
the clipped ratio (0.2), and ONE update (1 epoch x 1 minibatch, sequence-mean aggregation:
the original GRPO loss) with AdamW (lr 1e-5) over the policy. The rollout log-probs come from
the sampler (with one update the ratio is 1 at the start, as TRL's num_iterations=1 takes them
detached from the same forward). No value model, no recovery rollouts; W-tiny has no judge.

Size flags shrink the workload for smoke tests (`--batch` counts rollouts and must be a
multiple of the group size); the last printed line is one JSON object.
"""

import argparse
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import optax

from deepalign.benchmarks import matmul_work, timing, w_tiny, workload
from deepalign.benchmarks.ppo import LEARNING_RATE, ZeroJudge, _check_metrics, initial_params
from deepalign.errors import UserError
from deepalign.models.transformer import Transformer
from deepalign.train.rl.episodes import RolloutSpec
from deepalign.train.rl.grpo_step import GRPOConfig, make_grpo_step
from deepalign.train.rl.state import RLModels, RLState

PyTree = Any
GROUP_SIZE = 4
BETA = 0.04


def grpo_config(new_tokens: int = w_tiny.NEW_TOKENS) -> GRPOConfig:
  """The W-tiny GRPO step as a GRPOConfig (spelled out, not left to the defaults)."""
  rollout = RolloutSpec(sampling=w_tiny.sampling_config(new_tokens), group_size=GROUP_SIZE, recovery_coef=0.0,
                        logprobs_from_sampler=True)
  return GRPOConfig(rollout=rollout, beta=BETA, clip_eps=0.2, clip_eps_high=None,
                    scale_by_std=True, epochs=1, minibatches=1, aggregation='sequence_mean')


def optimizer() -> optax.GradientTransformation:
  """AdamW over the policy, no clipping, no schedule (as the PPO iteration's)."""
  return optax.adamw(LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)


def num_prompts(sizes: workload.Sizes) -> int:
  """Prompts per step: the rollouts (`sizes.batch`) over the group size."""
  if sizes.batch % GROUP_SIZE:
    raise UserError(f'--batch={sizes.batch} rollouts is not a multiple of the group size '
                    f'{GROUP_SIZE}.')
  return sizes.batch // GROUP_SIZE


def build(sizes: workload.Sizes, seed: int, prompts_path: str | None = None,
          params: Mapping[str, PyTree] | None = None
          ) -> tuple[RLModels, GRPOConfig, optax.GradientTransformation, RLState, dict]:
  """Models, config, optimizer, the initial RLState and the prompt batch of the workload.

  `params` ({'lm', 'score'}: the initial params, e.g. shared with another benchmark in the
  process; the step donates them) defaults to `ppo.initial_params(sizes, seed, ('lm', 'score'))`."""
  policy = Transformer(sizes.config('lm'))
  reward = Transformer(sizes.config('score'))
  params = initial_params(sizes, seed, ('lm', 'score')) if params is None else params
  policy_params, reward_params = params['lm'], params['score']
  models = RLModels(policy=policy, reward=reward, judge=ZeroJudge(), value=None)
  config, tx = grpo_config(sizes.new_tokens), optimizer()
  state = RLState.create(policy=policy_params, reference=policy_params, reward=reward_params,
                         judge={}, tx=tx, rng=jax.random.key(seed + 3), kl_coef=0.0)
  prompts = workload.prompts(sizes, prompts_path)[:num_prompts(sizes)]
  batch = {'prompt_tokens': jnp.asarray(prompts), 'prompt_mask': jnp.ones_like(prompts),
           'is_harmful': jnp.zeros((prompts.shape[0],), bool)}
  return models, config, tx, state, batch


def step_flops(sizes: workload.Sizes) -> dict[str, float]:
  """Matmul FLOPs of one step as `make_grpo_step` runs it: {'sample', 'score', 'update',
  'total'}. sample: generating N tokens for the B rollouts; score: the reward model over
  [B, P + N] (score head at the last position) and the reference over [B, P + N] with its LM
  head on the N response positions (the old log-probs are the sampler's); update: one forward
  and backward (2 forwards) of the policy over every rollout. Each group's prompt runs once in
  every one of them (the prefill, and `rl_episodes.sequence_hidden`)."""
  b, p, n, g = sizes.batch, sizes.prompt_len, sizes.new_tokens, GROUP_SIZE
  length = p + n
  forward = lambda head, head_tokens, read: matmul_work.grouped_forward_flops(
      sizes.config(head), b, g, p, length, head_tokens, read)
  # The policy reads the N positions predicting the response; the reward model the last one.
  policy_forward = forward('lm', n, slice(p - 1, p - 1 + n))
  sample = matmul_work.generation_flops(sizes, g)
  score = forward('score', 1, 1) + policy_forward
  update = 3 * policy_forward
  return {'sample': sample, 'score': score, 'update': update, 'total': sample + score + update}


def run(sizes: workload.Sizes, iters: int = 7, warmup: int = 2, seed: int = 0,
        prompts_path: str | None = None) -> dict[str, Any]:
  """Times the fused GRPO step: median seconds, rollout tokens/s, matmul work vs. the peak."""
  peak = matmul_work.measure_matmul_peak()  # first, before this process holds other programs
  models, config, tx, state, batch = build(sizes, seed, prompts_path)
  step = make_grpo_step(models, config, tx)
  timings, state, metrics = timing.time_state_steps(step, state, (batch,), iters, warmup)
  _check_metrics(metrics, sizes.new_tokens)
  median = timings.median
  flops = step_flops(sizes)
  return {
      'benchmark': 'w_tiny_grpo_step', **timing.environment(), **sizes.describe(),
      'group_size': GROUP_SIZE, 'prompts': num_prompts(sizes), 'iters': iters, 'warmup': warmup,
      'seconds_per_step': median,
      'tokens_per_second': sizes.batch * sizes.new_tokens / median,
      **timings.summary('step'),
      'first_call_s': timings.first_call_s,
      **matmul_work.work_figures(flops['total'], median, peak),
      'peak_rss_mb': timing.peak_rss_mb(),
  }


def format_summary(result: dict[str, Any]) -> str:
  """The human-readable lines printed before the JSON."""
  return '\n'.join([
      f'deepalign GRPO step ({result["workload"]}, {result["prompts"]} prompts x group '
      f'{result["group_size"]}): {result["seconds_per_step"]:.4f} s/step (median of '
      f'{result["iters"]} after {result["warmup"]} warm-ups), {result["tokens_per_second"]:.0f} '
      f'generated tokens/s, {result["step_cpu_median_s"]:.3f} CPU-s/step, peak RSS '
      f'{result["peak_rss_mb"]:.0f} MB, first call {result["first_call_s"]:.1f} s, load '
      f'{result["load_avg_1m"]}',
      matmul_work.format_work(result)])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m deepalign.benchmarks.grpo',
                                   description=__doc__.split('\n')[0])
  workload.add_arguments(parser, iters=7, warmup=2)
  args = parser.parse_args(argv)
  return workload.report(lambda: run(workload.sizes_from_args(args), args.iters, args.warmup,
                                     args.seed, args.prompts), format_summary)


if __name__ == '__main__':
  sys.exit(main())
