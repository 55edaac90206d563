"""XLA's memory plan of the rollout decode loop alone, scanned vs unscanned layers.

  python scripts/decode_memory.py --hub=configs/hub/gemma-2-2b-it --devices=8 --rows=96 \
      --prompt_len=512 --new_tokens=256

Compiles `rollout.generate` (prefill + the decode `while_loop`) for the policy of a hub
config.json with abstract fsdp-sharded params, on `--devices` simulated CPU devices (the
script re-runs itself with `--xla_force_host_platform_device_count`), under the run's mesh and
rules, once with `scan_layers=False` and once with `True`, and prints per-device temporaries /
peak and the largest all-gathered weight buffer of each. What it shows: unscanned, XLA hoists
every layer's fsdp all-gather out of the decode loop (a gathered copy of the whole policy per
chip for the whole rollout); scanned, each layer's weights are gathered inside the loop, one
layer at a time. Last line: JSON.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

_GIB = 1 << 30


def _measure(args: argparse.Namespace, scan: bool) -> dict:
  import jax
  import jax.numpy as jnp
  from deepalign import models, parallel
  from deepalign.models import hf_config
  from deepalign.rollout.generate import generate
  from deepalign.rollout.sampling_config import SamplingConfig

  cfg = hf_config.load_hf_config(args.hub, dtype='bfloat16', param_dtype='bfloat16')
  cfg = cfg.replace(scan_layers=scan)
  if args.num_layers:
    cfg = cfg.replace(num_layers=args.num_layers, layer_types=(
        cfg.layer_types[:args.num_layers] if cfg.layer_types else cfg.layer_types))
  model = models.Transformer(cfg)
  mesh = parallel.make_mesh({'data': 1, 'fsdp': -1, 'tensor': 1})
  abstract = jax.eval_shape(lambda: models.init_params(model, jax.random.PRNGKey(0)))
  shardings = parallel.param_shardings(models.logical_axes(model), abstract, mesh)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, shardings)
  batch = parallel.batch_sharding(mesh, 2)
  prompts = jax.ShapeDtypeStruct((args.rows, args.prompt_len), jnp.int32, sharding=batch)
  sampling = SamplingConfig(max_new_tokens=args.new_tokens, eos_id=1, pad_id=0)
  fn = jax.jit(lambda p, t, m, k: generate(model, p, t, m, k, sampling))
  start = time.perf_counter()
  with parallel.activation_sharding(mesh, parallel.DEFAULT_RULES):
    compiled = fn.lower(params, prompts, prompts, jax.random.PRNGKey(0)).compile()
  seconds = time.perf_counter() - start
  stats = compiled.memory_analysis()
  hlo = compiled.as_text()
  gathered = 0
  for dtype, dims in re.findall(r'= (bf16|f32)\[([0-9,]+)\][^ ]* all-gather\(', hlo):
    size = (2 if dtype == 'bf16' else 4)
    for d in dims.split(','):
      size *= int(d)
    gathered = max(gathered, size)
  return {'scan_layers': scan, 'compile_s': round(seconds, 1),
          'argument_gib': round(stats.argument_size_in_bytes / _GIB, 2),
          'temp_gib': round(stats.temp_size_in_bytes / _GIB, 2),
          'peak_gib': round((stats.argument_size_in_bytes + stats.output_size_in_bytes
                             - stats.alias_size_in_bytes + stats.temp_size_in_bytes) / _GIB, 2),
          'largest_all_gather_gib': round(gathered / _GIB, 3)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--hub', default='configs/hub/gemma-2-2b-it')
  parser.add_argument('--devices', type=int, default=8)
  parser.add_argument('--rows', type=int, default=96)
  parser.add_argument('--prompt_len', type=int, default=512)
  parser.add_argument('--new_tokens', type=int, default=256)
  parser.add_argument('--num_layers', type=int, default=0)
  args = parser.parse_args()
  flag = f'--xla_force_host_platform_device_count={args.devices}'
  if flag not in os.environ.get('XLA_FLAGS', ''):
    env = {**os.environ, 'XLA_FLAGS': flag, 'JAX_PLATFORMS': 'cpu'}
    sys.exit(subprocess.run([sys.executable, *sys.argv], env=env, check=False).returncode)
  out = {'hub': args.hub, 'devices': args.devices, 'rows': args.rows,
         'prompt_len': args.prompt_len, 'new_tokens': args.new_tokens,
         'runs': [_measure(args, scan) for scan in (True, False)]}
  for r in out['runs']:
    print(f"scan_layers={r['scan_layers']}: temporaries {r['temp_gib']} GiB, peak "
          f"{r['peak_gib']} GiB per device, largest all-gather {r['largest_all_gather_gib']} GiB, "
          f"compile {r['compile_s']} s")
  print(json.dumps(out))


if __name__ == '__main__':
  main()
