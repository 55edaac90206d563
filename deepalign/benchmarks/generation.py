"""W-tiny "Generation only": 16 x 32 prompts -> 64 sampled tokens with the KV cache.

  python -m deepalign.benchmarks.generation [--prompts=PATH] [--iters=10] [--warmup=2]

Prints seconds/call and tokens/s (timing.time_calls: warm-ups, then the median), the matmul
work with the rate reached against this machine's float32 matmul peak (`matmul_work.py`); the
last line is one JSON object.
"""

import json
import sys

from absl import app, flags
import jax
import jax.numpy as jnp

from deepalign import models, rollout
from deepalign.benchmarks import matmul_work, timing, w_tiny, workload
from deepalign.benchmarks.generation_flags import ITERS, PROMPTS, WARMUP
from deepalign.errors import UserError

_SEED = flags.DEFINE_integer('seed', 0, 'Policy init / sampling seed.')


def run(prompts_path: str | None, iters: int, warmup: int, seed: int) -> dict:
  """Times `rollout.generate` on the W-tiny workload; returns the measurements."""
  prompts = jnp.asarray(w_tiny.load_prompts(prompts_path))
  peak = matmul_work.measure_matmul_peak()  # first, before this process holds other programs
  mask = jnp.ones_like(prompts)
  model = models.Transformer(w_tiny.policy_config())
  params = models.init_params(model, jax.random.key(seed))
  config = w_tiny.sampling_config()
  rng = jax.random.key(seed + 1)
  holder = {}

  def call(i: int):
    holder['out'] = rollout.generate(model, params, prompts, mask, jax.random.fold_in(rng, i),
                                     config=config)
    return holder['out']

  timings = timing.time_calls(call, iters, warmup)
  out = holder['out']
  if int(out.lengths.min()) != w_tiny.NEW_TOKENS:
    raise RuntimeError(f'expected {w_tiny.NEW_TOKENS} tokens per row, got {out.lengths}')
  return {
      'benchmark': 'w_tiny_generation', **timing.environment(),
      'batch': w_tiny.BATCH, 'prompt_len': w_tiny.PROMPT_LEN, 'new_tokens': w_tiny.NEW_TOKENS,
      'iters': iters, 'warmup': warmup, **w_tiny.generation_figures(timings),
      **matmul_work.work_figures(matmul_work.generation_flops(workload.Sizes()), timings.median,
                                 peak),
      'peak_rss_mb': timing.peak_rss_mb(),
  }


def main(argv):
  del argv
  try:
    result = run(PROMPTS.value, ITERS.value, WARMUP.value, _SEED.value)
  except UserError as e:  # one line, status 2, like every entry point (not absl's usage text)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(f'deepalign generate: {result["median_s"]:.4f} s/call (median of {result["iters"]}), '
        f'{result["tokens_per_s"]:.0f} tokens/s, first call {result["first_call_s"]:.2f} s')
  print(matmul_work.format_work(result))
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
