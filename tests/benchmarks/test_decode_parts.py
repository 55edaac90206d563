"""The generation's parts (`benchmarks/decode_parts.py`) are the decode loop's own work: the matmul
part's products and the attention part's cache sizes add up, with the prefill, to the generation's
matmul count, and XLA counts the same work in each part's program; the CLI ends with its JSON."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.benchmarks import decode_parts, matmul_work, workload
from deepalign.models.transformer import Transformer, init_params
from deepalign.rollout.generate import decode_phases

SIZES = workload.Sizes(batch=4, prompt_len=24, new_tokens=8, vocab=512, hidden=128, layers=2,
                       heads=4, head_dim=32, intermediate=344)
TINY_FLAGS = ['--batch=2', '--prompt_len=4', '--new_tokens=4', '--vocab=64', '--hidden=32',
              '--layers=1', '--heads=2', '--head_dim=16', '--intermediate=48']


def xla_flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)['flops'])


def _attention_flops(sizes: workload.Sizes) -> float:
  """Scores and weighted values of every decode step over its phase's cache."""
  cfg, flops, start = sizes.config('lm'), 0.0, 1
  for t_end, slots in decode_phases(sizes.prompt_len, sizes.new_tokens):
    per_step = 2 * 2 * sizes.batch * cfg.num_heads * slots * cfg.head_dim * cfg.num_layers
    flops, start = flops + (t_end - start) * per_step, t_end
  return flops


def test_matmul_and_attention_parts_are_the_decode_steps_of_the_generation():
  _, matmul_flops = decode_parts.build(SIZES, seed=0, prompts_path=None)
  s, cfg = SIZES, SIZES.config('lm')
  prefill = matmul_work.forward_flops(cfg, s.batch, s.prompt_len,
                                      decode_phases(s.prompt_len, s.new_tokens)[0][1], 1,
                                      read_tokens=1)
  np.testing.assert_allclose(matmul_flops + _attention_flops(s) + prefill,
                             matmul_work.generation_flops(s), rtol=1e-12)


def test_each_parts_program_runs_the_work_it_is_counted_for():
  cfg = SIZES.config('lm')
  params = init_params(Transformer(cfg), jax.random.key(0))
  layers, head = decode_parts._decode_kernels(params, cfg.num_layers)
  x = jnp.ones((SIZES.batch, cfg.hidden_size))
  step = 2 * SIZES.batch * (sum(w.size for layer in layers for w in layer) + head.size)
  xla = xla_flops(decode_parts._matmuls_program(1), layers, head, x)  # one step, no loop left
  assert step <= xla <= 1.02 * step
  # XLA counts a loop's body once: one step per decode phase, each over its phase's cache.
  phases = decode_phases(SIZES.prompt_len, 64)
  assert len(phases) == 4
  shape = (SIZES.batch, cfg.num_kv_heads, phases[-1][1], cfg.head_dim)
  caches = tuple(jnp.ones(shape) for _ in range(cfg.num_layers))
  q = jnp.ones((SIZES.batch, cfg.num_kv_heads, cfg.head_dim))
  xla = xla_flops(decode_parts._attention_program(phases, cfg.num_layers), caches, caches, q)
  attention = sum(2 * 2 * SIZES.batch * cfg.num_heads * slots * cfg.head_dim * cfg.num_layers
                  for _, slots in phases)
  assert attention <= xla <= 1.1 * attention


def test_cli_last_line_is_the_json_result(capsys):
  assert decode_parts.main(TINY_FLAGS + ['--rounds=2', '--iters=1', '--warmup=1']) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  parts = [result[f'{name}_s'] for name in decode_parts.PARTS]
  assert all(isinstance(t, float) and t > 0 for t in parts + [result['generate_s']])
  np.testing.assert_allclose(result['parts_sum_s'], sum(parts))
  np.testing.assert_allclose(result['rest_s'], result['generate_s'] - sum(parts))
  assert result['workload'] == 'reduced' and result['rounds'] == 2
  assert 'decode parts' in lines[0] and 'GFLOP/s' in lines[-2]


def test_cli_rejects_zero_rounds(capsys):
  assert decode_parts.main(TINY_FLAGS + ['--rounds=0']) == 2
  assert 'rounds' in capsys.readouterr().err
