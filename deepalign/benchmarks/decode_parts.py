"""Where W-tiny's generation time goes: `generate`, and each of its parts alone, in one process.

  python -m deepalign.benchmarks.decode_parts [--rounds=5] [--iters=3] [size flags]

Times, alternating in rounds (so a change in the machine's speed hits every part alike):
  generate        `rollout.generate`, as `benchmarks/generation.py` runs it
  prefill         the prompt's forward with its cache and the first token's logits
  matmuls         the decode loop's products alone, N - 1 steps chained through the hidden
                  state: per layer the fused q|k|v, o, fused gate|up and down kernels, then the
                  LM head, with the weights `generate` multiplies (nothing else in the loop)
  attention       the attention over the KV cache alone, N - 1 steps: per layer the scores
                  against the keys, softmax, the weighted sum of the values, at the cache sizes
                  of `generate`'s decode phases (`rollout.generate.decode_phases`)
  sampler         the per-step sampling work alone, N - 1 steps over [B, V] logits: the
                  inverse-CDF draw, the token's log-prob and the entropy (`generate`'s `choose`)
The parts run the loop's kernels in programs of their own, with nothing between them: their sum
is about what a generation takes when only these products, reads and reductions are left, the
floor these kernels set on this machine. The rest (`generate` minus the sum: norms, rope, cache
writes, the loop's own ops, and the caches the parts no longer share) is what any other change
could remove. Last line: one JSON object.
"""

import argparse
import statistics
import sys
from typing import Any, Callable

import jax
import jax.numpy as jnp

from deepalign import models, rollout
from deepalign.benchmarks import matmul_work, timing, w_tiny, workload
from deepalign.errors import UserError
from deepalign.models import fused_projections
from deepalign.models.kv_cache import init_cache
from deepalign.models.transformer import Transformer
from deepalign.rollout.categorical import sample_categorical
from deepalign.rollout.generate import decode_phases
from deepalign.rollout.logprobs import token_entropy, token_logprobs

PARTS = ('prefill', 'matmuls', 'attention', 'sampler')
_TINY = 1e-6  # folds a step's outputs into the next step's input without changing its scale


def _decode_kernels(params: Any, num_layers: int) -> tuple[list[tuple[jax.Array, ...]], jax.Array]:
  """Per layer (q|k|v [D, 3F'], o [H*hd, D], gate|up [D, 2F], down [F, D]) as `generate`
  multiplies them (`fused_projections.fuse`), and the LM head [D, V]."""
  fused = fused_projections.fuse(params)
  layers = []
  for i in range(num_layers):
    attn, mlp = fused[f'layers_{i}']['attn'], fused[f'layers_{i}']['mlp']
    qkv = attn[fused_projections.QKV_KERNEL]
    o = attn['o_proj']['kernel']
    layers.append((qkv.reshape(qkv.shape[0], -1), o.reshape(-1, o.shape[-1]),
                   mlp[fused_projections.GATE_UP_KERNEL], mlp['down_proj']['kernel']))
  return layers, fused['lm_head']['kernel']


def _matmuls_program(steps: int) -> Callable:
  """x [B, D] through `steps` decode steps of products alone; every output column is used."""
  def run(layers, head, x):
    def step(_, x):
      for qkv, o, gate_up, down in layers:
        b = x.shape[0]
        a = (x @ qkv).reshape(b, -1, o.shape[0]).sum(axis=1)  # q + k + v: [B, H*hd]
        x = x + _TINY * (a @ o)
        g = (x @ gate_up).reshape(b, 2, -1).sum(axis=1)        # gate + up: [B, F]
        x = x + _TINY * (g @ down)
      return x + _TINY * (x @ head).reshape(x.shape[0], -1, x.shape[1]).sum(axis=1)
    return jax.lax.fori_loop(0, steps, step, x)
  return jax.jit(run)


def _attention_program(phases: list[tuple[int, int]], num_layers: int) -> Callable:
  """q [B, K, hd] through the decode steps' attention over caches [B, K, S, hd] of each phase's
  S slots (keys and values: one buffer each per layer), nothing else."""
  def run(keys, values, q):
    t = 1
    for t_end, slots in phases:
      def step(_, q, slots=slots):
        for layer in range(num_layers):
          k, v = keys[layer][:, :, :slots], values[layer][:, :, :slots]
          scores = jnp.einsum('bkd,bksd->bks', q, k)
          probs = jax.nn.softmax(scores, axis=-1)
          q = q + _TINY * jnp.einsum('bks,bksd->bkd', probs, v)
        return q
      q = jax.lax.fori_loop(t, t_end, step, q)
      t = t_end
    return q
  return jax.jit(run)


def _sampler_program(steps: int, temperature: float) -> Callable:
  """logits [B, V] through `steps` draws + log-probs + entropies (the decode step's `choose`)."""
  def run(logits, rng):
    def step(t, logits):
      z = logits / jnp.float32(temperature)
      token = sample_categorical(jax.random.fold_in(rng, t), z)
      logprob = token_logprobs(logits, token, temperature, gather=True)
      entropy = token_entropy(logits, temperature)
      return logits + _TINY * (logprob + entropy)[:, None]
    return jax.lax.fori_loop(1, steps + 1, step, logits)
  return jax.jit(run)


def build(sizes: workload.Sizes, seed: int, prompts_path: str | None
          ) -> tuple[dict[str, Callable], float]:
  """({'generate' and each of PARTS: call(i) -> the jax values to wait for, compiled lazily},
  the matmul FLOPs of the 'matmuls' part)."""
  cfg = sizes.config('lm')
  if cfg.scan_layers or cfg.mlp_type != 'gated':
    raise UserError('decode_parts times the W-tiny architecture (unscanned, gated MLP).')
  model = Transformer(cfg)
  params = models.init_params(model, jax.random.key(seed))
  prompts = jnp.asarray(workload.prompts(sizes, prompts_path))
  mask = jnp.ones_like(prompts)
  config = w_tiny.sampling_config(sizes.new_tokens)
  rng = jax.random.key(seed + 1)
  b, p, n = sizes.batch, sizes.prompt_len, sizes.new_tokens
  phases = decode_phases(p, n)

  @jax.jit
  def prefill(params, prompts, mask):
    cache = init_cache(cfg, b, phases[0][1])
    hidden, cache = model.apply({'params': params}, prompts, mask, cache=cache,
                                read=slice(p - 1, p), method=Transformer.hidden_states)
    return model.apply({'params': params}, hidden[:, -1], method=Transformer.logits), cache

  layers, head = _decode_kernels(params, cfg.num_layers)
  matmuls = _matmuls_program(n - 1)
  x = jax.random.normal(jax.random.key(seed + 2), (b, cfg.hidden_size), jnp.float32)
  slots = phases[-1][1]
  cache_shape = (b, cfg.num_kv_heads, slots, cfg.head_dim)
  keys = tuple(jax.random.normal(jax.random.key(seed + 3 + i), cache_shape)
               for i in range(cfg.num_layers))
  values = tuple(jax.random.normal(jax.random.key(seed + 3 + cfg.num_layers + i), cache_shape)
                 for i in range(cfg.num_layers))
  attention = _attention_program(phases, cfg.num_layers)
  q = jax.random.normal(jax.random.key(seed + 4), (b, cfg.num_kv_heads, cfg.head_dim))
  sampler = _sampler_program(n - 1, config.temperature)
  logits = 2.0 * jax.random.normal(jax.random.key(seed + 5), (b, cfg.vocab_size))
  step_flops = 2 * b * (sum(w.size for layer in layers for w in layer) + head.size)
  calls = {
      'generate': lambda i: rollout.generate(model, params, prompts, mask,
                                             jax.random.fold_in(rng, i), config=config),
      'prefill': lambda i: prefill(params, prompts, mask),
      'matmuls': lambda i: matmuls(layers, head, x),
      'attention': lambda i: attention(keys, values, q),
      'sampler': lambda i: sampler(logits, jax.random.fold_in(rng, i)),
  }
  return calls, (n - 1) * step_flops


def run(sizes: workload.Sizes, rounds: int = 5, iters: int = 3, warmup: int = 2, seed: int = 0,
        prompts_path: str | None = None) -> dict[str, Any]:
  """Times `generate` and each part, `iters` calls per round and part, alternating the order."""
  if rounds < 1:
    raise UserError(f'--rounds={rounds} must be >= 1.')
  peak = matmul_work.measure_matmul_peak()
  calls, matmul_flops = build(sizes, seed, prompts_path)
  names = ('generate',) + PARTS
  times: dict[str, list[float]] = {name: [] for name in names}
  for r in range(rounds):
    for name in (names if r % 2 == 0 else names[::-1]):
      times[name] += timing.time_calls(calls[name], iters, warmup if r == 0 else 0).times
  median = {name: statistics.median(t) for name, t in times.items()}
  parts_sum = sum(median[name] for name in PARTS)
  return {
      'benchmark': 'w_tiny_decode_parts', **timing.environment(), **sizes.describe(),
      'rounds': rounds, 'iters': iters, 'warmup': warmup,
      **{f'{name}_s': median[name] for name in names},
      'parts_sum_s': parts_sum, 'rest_s': median['generate'] - parts_sum,
      'matmuls_gflops': matmul_flops / median['matmuls'] / 1e9,
      **matmul_work.work_figures(matmul_work.generation_flops(sizes), median['generate'], peak),
  }


def format_summary(result: dict[str, Any]) -> str:
  total = result['generate_s']
  lines = [f'deepalign decode parts ({result["workload"]}, {result["rounds"]} rounds x '
           f'{result["iters"]} calls, medians; load {result["load_avg_1m"]}):',
           f'  generate   {total:.4f} s']
  for name in PARTS:
    lines.append(f'  {name:10s} {result[f"{name}_s"]:.4f} s  {100 * result[f"{name}_s"] / total:5.1f}%')
  lines.append(f'  parts sum  {result["parts_sum_s"]:.4f} s  {100 * result["parts_sum_s"] / total:5.1f}%'
               f'; the rest {result["rest_s"]:.4f} s')
  lines.append(f'the decode products alone run at {result["matmuls_gflops"]:.0f} GFLOP/s '
               f'({result["matmuls_gflops"] / result["matmul_peak_gflops"]:.0%} of the peak)')
  lines.append(matmul_work.format_work(result))
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m deepalign.benchmarks.decode_parts',
                                   description=__doc__.split('\n')[0])
  workload.add_arguments(parser, iters=3, warmup=2)
  parser.add_argument('--rounds', type=int, default=5, help='alternating rounds')
  args = parser.parse_args(argv)
  return workload.report(lambda: run(workload.sizes_from_args(args), args.rounds, args.iters,
                                     args.warmup, args.seed, args.prompts), format_summary)


if __name__ == '__main__':
  sys.exit(main())
