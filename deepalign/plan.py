"""The memory plan of a stage's train step on a TPU slice, from XLA itself, without the slice.

  python -m deepalign.plan --config=configs/ppo_recovery.py:gemma2_2b --topology=v5e-8
  python -m deepalign.plan --config=configs/sft.py:llama3_8b            # the preset's topology
  python -m deepalign.plan --config=configs/dpo.py:qwen2_5_7b --num_layers=2 --config.train.batch_size=32

Builds every model of the stage from its `config.json` alone (abstract params: no weights are read
or allocated), places them as the run would (`train.loop.place`: the config's mesh and logical-axis
rules, the optimizer state like its params), and compiles the stage's own train step ahead of time
(`jax.jit(step).lower(abstract state, abstract batch).compile()`) on as many simulated CPU devices
as the topology has chips (the command re-runs itself in a subprocess with
`--xla_force_host_platform_device_count`, which must be set before jax starts). It prints XLA's
per-device argument / output / temporary / peak bytes against the chip's HBM, the compile time and
the collectives of the compiled program, and exits with status 1 when the peak does not fit (2 on
a usage error). The last line is one JSON object with every figure.

Where the architectures come from: the policy from `model.init_from` (an earlier stage's export)
or `model.hf_dir` when they hold a config.json, else the committed copy
`configs/hub/<basename of model.hf_dir>/config.json`; the reward model and judge of the RL stages
from `rl.reward_from` / `rl.judge` likewise, else the policy's architecture with a score head (a
reward model trained from the SFT policy; a ShieldGemma / Llama-Guard-sized judge). Row shapes
come from the stage's own pipeline (`data.max_len`, `max_prompt_len`, ...) fed with generated
records, so no dataset or tokenizer is needed.

The CPU backend's plan is a conservative bound for a TPU: it upcasts bfloat16 matmuls (float32
temporaries) and fuses less, so a TPU needs at most what it reports.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_flags

from deepalign.errors import UserError


def define_flags() -> None:
  """The command's flags, defined when it runs as a program (`python -m deepalign.plan`), so that
  importing this module (tests, tools) claims no absl flag name: `--config` is also
  `deepalign.main`'s, and absl refuses a name defined twice in one process."""
  config_flags.DEFINE_config_file(
      'config', None, 'configs/FILE.py[:PRESET]; override any field with --config.a.b=value',
      lock_config=False)
  flags.DEFINE_string('topology', '', "the slice (parallel/topology.py: v5e-8, v5e-16, "
                      "v5p-32, v6e-8, cpu); default: the config's parallel.topology")
  flags.DEFINE_float('hbm_gib', 0.0, 'memory per device to fit in, GiB; default: the chip\'s HBM')
  flags.DEFINE_integer('num_layers', 0, 'every model cut to this many layers (0 = as in '
                       'config.json): a quick plan of the same architecture')
  flags.DEFINE_integer('largest', 0, 'also list the N largest arrays the compiled step '
                       'produces (shape, dtype, the JAX op that made them): where the memory goes')
  flags.DEFINE_string('dump_hlo', '', 'write the compiled step\'s HLO text to this file')
  flags.DEFINE_integer('vocab_size', 0, 'every model\'s vocabulary cut to this size (0 = as '
                       'in config.json)')


# Set in the re-run child: the device count it was started with.
_CHILD_ENV = 'DEEPALIGN_PLAN_DEVICES'
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HUB_DIR = os.path.join(_REPO, 'configs', 'hub')
COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute',
               'collective-broadcast')
_GIB = 1 << 30


# ----------------------------------------------------------------------------------------------
# Where each model's config.json comes from.


def _has_config(path: str) -> bool:
  return bool(path) and os.path.isfile(os.path.join(path, 'config.json'))


def hub_config_dir(hf_dir: str) -> str:
  """The committed copy of `hf_dir`'s config.json: configs/hub/<basename>/ ('' if none)."""
  name = os.path.basename(os.path.normpath(hf_dir)) if hf_dir else ''
  path = os.path.join(HUB_DIR, name)
  return path if name and _has_config(path) else ''


def policy_source(model_config: Any) -> str:
  """The directory whose config.json is the policy's architecture."""
  from deepalign.train import policy_init
  if model_config.init_from:
    found = policy_init.hf_dir_of(model_config.init_from)
    if found:
      return found
  if _has_config(model_config.hf_dir):
    return model_config.hf_dir
  found = hub_config_dir(model_config.hf_dir)
  if found:
    return found
  raise UserError(f"no config.json for the policy: config.model.hf_dir='{model_config.hf_dir}' has "
                  f"none and configs/hub/ has no copy of it; download the checkpoint there, or pass "
                  f"--config.model.hf_dir=configs/hub/<name> (one of {', '.join(sorted(os.listdir(HUB_DIR)))})")


def _scorer_source(path: str) -> str:
  """A reward model / judge checkpoint's directory with a config.json, or '' (use the policy's)."""
  from deepalign.train import policy_init
  if not path:
    return ''
  found = policy_init.hf_dir_of(path)
  return found or hub_config_dir(path)


def _read_hf_config(directory: str) -> dict[str, Any]:
  with open(os.path.join(directory, 'config.json')) as f:
    return json.load(f)


def _shrunk(hf: dict[str, Any], num_layers: int, vocab_size: int) -> dict[str, Any]:
  """A transformers config.json dict cut to `num_layers` layers / `vocab_size` ids (0 = as is)."""
  hf = dict(hf)
  if num_layers:
    for key in ('num_hidden_layers', 'n_layer'):
      if key in hf:
        hf[key] = num_layers
    if isinstance(hf.get('layer_types'), list):
      hf['layer_types'] = hf['layer_types'][:num_layers]
  if vocab_size:
    hf['vocab_size'] = vocab_size
    clip = lambda i: i if i is None or i < vocab_size else vocab_size - 1
    for key in ('pad_token_id', 'bos_token_id', 'eos_token_id'):
      value = hf.get(key)
      hf[key] = [clip(i) for i in value] if isinstance(value, list) else clip(value)
  return hf


def _as_scorer(hf: dict[str, Any]) -> dict[str, Any]:
  """The *ForSequenceClassification (one label) config.json of a causal LM's."""
  arch = hf['architectures'][0]
  arch = ('GPT2ForSequenceClassification' if arch == 'GPT2LMHeadModel'
          else arch.replace('ForCausalLM', 'ForSequenceClassification'))
  return {**hf, 'architectures': [arch], 'id2label': {'0': 'LABEL_0'}, 'label2id': {'LABEL_0': 0}}


def _write_config(hf: dict[str, Any], directory: str) -> str:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'config.json'), 'w') as f:
    json.dump(hf, f, indent=1)
  return directory


def abstract_config(config: Any, workdir: str, num_layers: int = 0, vocab_size: int = 0
                    ) -> tuple[Any, dict[str, str]]:
  """(a copy of `config` that builds its stage without weights or data, {model: config source}).

  Each model's architecture is written (shrunk when asked) to `workdir/<model>/config.json` and
  the config points there; `model.abstract` makes the stage builders read only that file. Data:
  generated records of the same row shapes; evaluation off (it would run the models).
  """
  config = config.copy_and_resolve_references()
  config.unlock()
  sources: dict[str, str] = {}
  policy_dir = policy_source(config.model)
  sources['policy'] = policy_dir
  policy_hf = _shrunk(_read_hf_config(policy_dir), num_layers, vocab_size)
  config.model.hf_dir = _write_config(policy_hf, os.path.join(workdir, 'policy'))
  config.model.init_from = ''
  config.model.abstract = True
  rl = config.get('rl')
  if rl is not None:
    for field, name in (('reward_from', 'reward'), ('judge', 'judge')):
      if field == 'judge' and rl.judge == 'env':
        continue
      source = _scorer_source(rl[field])
      if source:
        hf = _shrunk(_read_hf_config(source), num_layers, vocab_size)
        sources[name] = source
      else:
        hf = _as_scorer(policy_hf)
        sources[name] = f'{policy_dir} (the policy architecture with a score head)'
      rl[field] = _write_config(hf, os.path.join(workdir, name))
  if config.data.source != 'harm_language':
    config.data.update({'source': 'harm_language', 'language': 'toy', 'tokenizer_dir': ''})
  config.data.update({'num_train': 256, 'num_eval': 16})
  for section in ('sft', 'dpo', 'reward_model', 'rl'):
    if section in config:
      if 'eval_batches' in config[section]:
        config[section].eval_batches = 0
      if 'harm_eval' in config[section]:
        config[section].harm_eval = False
  if 'dpo' in config and config.dpo.reference == 'precomputed':
    raise UserError("config.dpo.reference='precomputed' runs the reference over the data before "
                    "training; plan the 'on_the_fly' step (its reference costs more memory)")
  config.parallel.distributed.enabled = False
  return config, sources


# ----------------------------------------------------------------------------------------------
# The compiled step and its figures.


def count_collectives(hlo_text: str) -> dict[str, int]:
  """How many instructions of each collective the HLO text holds (async `-start` halves count once)."""
  counts = {}
  for name in COLLECTIVES:
    counts[name] = len(re.findall(rf'\s{re.escape(name)}(?:-start)?\(', hlo_text))
  return counts


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'bf16': 2, 'f16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%\S+ = (\w+)\[([0-9,]*)\]\S* (\S+?)\(.*?'
                          r'(?:op_name="([^"]*)")?[^"]*$')


def largest_buffers(hlo_text: str, n: int) -> list[dict[str, Any]]:
  """The `n` largest array results of the compiled (per-device) HLO: shape, dtype, bytes, the
  HLO opcode and the JAX op that made it, with how many instructions share all four. Liveness
  is not modelled: this says which arrays are big, `memory_analysis` how many live at once."""
  seen: dict[tuple, dict[str, Any]] = {}
  for line in hlo_text.splitlines():
    match = _INSTRUCTION.match(line)
    if not match or match.group(1) not in _DTYPE_BYTES:
      continue
    dtype, dims, opcode, op_name = match.groups()
    shape = tuple(int(d) for d in dims.split(',') if d)
    size = _DTYPE_BYTES[dtype]
    for d in shape:
      size *= d
    key = (dtype, shape, opcode, op_name or '')
    entry = seen.setdefault(key, {'dtype': dtype, 'shape': list(shape), 'bytes': size,
                                  'opcode': opcode, 'op_name': op_name or '', 'count': 0})
    entry['count'] += 1
  return sorted(seen.values(), key=lambda e: -e['bytes'])[:n]


def memory_figures(stats: Any) -> dict[str, int]:
  """Per-device bytes of XLA's `CompiledMemoryStats`; peak = arguments + outputs not aliased to
  (donated) arguments + temporaries, or XLA's own peak where it reports a larger one."""
  argument, output = int(stats.argument_size_in_bytes), int(stats.output_size_in_bytes)
  alias, temp = int(stats.alias_size_in_bytes), int(stats.temp_size_in_bytes)
  peak = max(int(getattr(stats, 'peak_memory_in_bytes', 0) or 0), argument + output - alias + temp)
  return {'argument_bytes': argument, 'output_bytes': output, 'alias_bytes': alias,
          'temp_bytes': temp, 'peak_bytes': peak}


def _per_device_bytes(tree: Any) -> int:
  import jax
  import numpy as np
  total = 0
  for leaf in jax.tree.leaves(tree):
    shape = leaf.sharding.shard_shape(leaf.shape) if getattr(leaf, 'sharding', None) else leaf.shape
    total += int(np.prod(shape, dtype=np.int64)) * np.dtype(leaf.dtype).itemsize
  return total


def _model_summary(abstract_params: Any, shardings: Any) -> dict[str, dict[str, Any]]:
  """{model: {params, dtype, bytes_per_device}} of the stage's params (RL: one entry per model)."""
  import jax
  import numpy as np
  placed = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract_params, shardings)
  parts = placed if isinstance(placed, dict) and 'policy' in placed else {'policy': placed}
  out = {}
  for name, tree in parts.items():
    leaves = jax.tree.leaves(tree)
    if not leaves:
      continue
    dtypes = sorted({np.dtype(x.dtype).name for x in leaves})
    out[name] = {'params': int(sum(np.prod(x.shape, dtype=np.int64) for x in leaves)),
                 'dtype': '/'.join(dtypes), 'bytes_per_device': _per_device_bytes(tree)}
  return out


def _with_shardings(tree: Any, shardings: Any) -> Any:
  import jax
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def compile_step(config: Any, workdir: str, largest: int = 0, dump_hlo: str = ''
                 ) -> dict[str, Any]:
  """Builds the stage of `config` (already abstract) and compiles its train step; the figures."""
  import jax
  from deepalign import parallel
  from deepalign.train import loop, stages
  from deepalign.train.optimizer import build_optimizer

  task = stages.build_task(config, workdir)
  tx, schedule = build_optimizer(config.optimizer, int(config.train.num_steps))
  placement, abstract_params = loop.place(task, config, tx)
  create = jax.jit(lambda p: task.create_state(p, tx, loop.init_rng(config)),
                   out_shardings=placement.state)
  state = _with_shardings(jax.eval_shape(create, abstract_params), placement.state)
  make_step = task.make_step or functools.partial(loop.make_train_step, task.loss_fn)
  step = make_step(tx, schedule, int(config.optimizer.grad_accum_steps), placement.state,
                   placement.replicated)
  frozen = task.frozen
  if frozen is not None:  # a frozen copy of the params (DPO's reference) is sharded like them
    same = jax.tree.structure(frozen) == jax.tree.structure(abstract_params)
    frozen = _with_shardings(frozen, placement.params if same else
                             jax.tree.map(lambda _: placement.replicated, frozen))
  host_batch = next(iter(task.train_iterator()))
  batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=parallel.batch_sharding(placement.mesh, x.ndim, placement.rules)),
      host_batch)
  jitted = step if hasattr(step, 'lower') else jax.jit(step, donate_argnums=(0,))
  start = time.perf_counter()
  with parallel.activation_sharding(placement.mesh, placement.rules):  # as loop.train traces it
    compiled = jitted.lower(state, frozen, batch).compile()
  compile_s = time.perf_counter() - start
  figures = memory_figures(compiled.memory_analysis())
  hlo = compiled.as_text() or ''
  if dump_hlo:
    with open(dump_hlo, 'w') as f:
      f.write(hlo)
  extra = {'largest_buffers': largest_buffers(hlo, largest)} if largest else {}
  return {**extra,
      'mesh': {k: int(v) for k, v in placement.mesh.shape.items()},
      'models': _model_summary(abstract_params, placement.params),
      'state_bytes_per_device': _per_device_bytes(state),
      'batch_shapes': {k: list(v.shape) for k, v in batch.items()} if isinstance(batch, dict) else {},
      'compile_s': round(compile_s, 1), 'hlo_chars': len(hlo),
      'collectives': count_collectives(hlo), **figures,
  }


def _gib(n: float) -> str:
  return f'{n / _GIB:.2f} GiB'


def report_lines(result: dict[str, Any]) -> list[str]:
  """The human-readable lines before the JSON one."""
  lines = [f"plan: {result['config']} stage={result['stage']} topology={result['topology']} "
           f"({result['topology_description']}) devices={result['devices']} mesh={result['mesh']}"]
  for name, source in result['sources'].items():
    lines.append(f'  {name} architecture: {source}')
  for name, m in result['models'].items():
    lines.append(f"  {name}: {m['params'] / 1e9:.3f} B params {m['dtype']}, {_gib(m['bytes_per_device'])} "
                 'per device')
  lines.append(f"  batch: {result['batch_shapes']}")
  lines.append(f"compile: {result['compile_s']:.1f} s ({result['hlo_chars'] / 1e6:.1f} M characters of HLO)")
  verdict = 'fits' if result['fits'] else 'DOES NOT FIT'
  lines.append(f"per device: arguments {_gib(result['argument_bytes'])}, outputs "
               f"{_gib(result['output_bytes'])} (aliased to donated arguments "
               f"{_gib(result['alias_bytes'])}), temporaries {_gib(result['temp_bytes'])}, peak "
               f"{_gib(result['peak_bytes'])} of {_gib(result['hbm_bytes'])}: {verdict}")
  lines.append('collectives: ' + ', '.join(f'{k} {v}' for k, v in result['collectives'].items()))
  if result.get('largest_buffers'):
    lines.append('largest arrays (per device; liveness not modelled):')
    for e in result['largest_buffers']:
      lines.append(f"  {_gib(e['bytes'])}  {e['dtype']}{e['shape']} x{e['count']}  "
                   f"{e['opcode']}  {e['op_name'][-110:]}")
  return lines


def run_plan(config: Any, spec: str, topology_name: str, hbm_gib: float, num_layers: int,
             vocab_size: int, largest: int = 0, dump_hlo: str = '') -> dict[str, Any]:
  """The whole plan in this process (its device count must already be the topology's)."""
  import jax
  from deepalign.parallel import topology as topology_lib
  topology = topology_lib.get_topology(topology_name)
  devices = topology_lib.device_count(topology, jax.device_count())
  if jax.device_count() != devices:
    raise UserError(f'topology {topology.name} has {devices} chips but this process sees '
                    f'{jax.device_count()} devices; run `python -m deepalign.plan` (it starts itself '
                    'with the right simulated device count)')
  hbm = int(hbm_gib * _GIB) if hbm_gib > 0 else topology.hbm_bytes
  with tempfile.TemporaryDirectory(prefix='deepalign-plan-') as workdir:
    plan_config, sources = abstract_config(config, workdir, num_layers, vocab_size)
    figures = compile_step(plan_config, workdir, largest, dump_hlo)
  result = {'config': spec, 'stage': str(config.stage), 'topology': topology.name,
            'topology_description': topology.description, 'devices': devices,
            'num_layers': num_layers or None, 'vocab_size': vocab_size or None,
            'sources': sources, 'hbm_bytes': hbm, **figures}
  result['fits'] = bool(hbm and result['peak_bytes'] <= hbm)
  result['peak_gib'] = round(result['peak_bytes'] / _GIB, 2)
  result['hbm_gib'] = round(hbm / _GIB, 2)
  return result


# ----------------------------------------------------------------------------------------------
# Command line.


def _fail(message: str) -> None:
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(2)


def _config_spec(argv: Sequence[str]) -> str:
  for i, arg in enumerate(argv):
    if arg.startswith(('--config=', '-config=')):
      return arg.split('=', 1)[1]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1]
  return ''


def _child_env(devices: int) -> dict[str, str]:
  flags_ = [f for f in os.environ.get('XLA_FLAGS', '').split()
            if not f.startswith('--xla_force_host_platform_device_count')]
  flags_.append(f'--xla_force_host_platform_device_count={devices}')
  return {**os.environ, 'XLA_FLAGS': ' '.join(flags_), 'JAX_PLATFORMS': 'cpu',
          _CHILD_ENV: str(devices),
          'PYTHONPATH': _REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}


def parse_flags(argv: Sequence[str]) -> list[str]:
  spec = _config_spec(argv)
  if not spec:
    _fail('missing --config=configs/FILE.py[:PRESET]')
  root = os.path.dirname(os.path.dirname(os.path.abspath(spec.split(':', 1)[0])))
  if root not in sys.path:
    sys.path.insert(0, root)
  try:
    rest = flags.FLAGS(argv)
    config = flags.FLAGS.config
    if config is None or not hasattr(config, 'stage'):
      raise flags.Error(f'--config={spec} did not load')
  except SystemExit:
    raise
  except UserError as e:
    _fail(str(e))
  except Exception as e:  # flags.Error, an unknown key, a config file that fails
    first = str(e).strip().splitlines()
    _fail(first[0] if first else type(e).__name__)
  return rest


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments {" ".join(argv[1:])}; flags look like --config.a.b=value')
  config = flags.FLAGS.config
  try:
    from deepalign.parallel import topology as topology_lib
    topology = topology_lib.get_topology(flags.FLAGS.topology or str(config.parallel.get('topology', 'cpu')))
    # jax must start with the topology's device count ('cpu': the devices this process has)
    if topology.chips and os.environ.get(_CHILD_ENV) != str(topology.chips):
      proc = subprocess.run([sys.executable, '-m', 'deepalign.plan', *sys.argv[1:]],
                            env=_child_env(topology.chips), check=False)
      sys.exit(proc.returncode)
    result = run_plan(config, _config_spec(sys.argv), topology.name, flags.FLAGS.hbm_gib,
                      flags.FLAGS.num_layers, flags.FLAGS.vocab_size, flags.FLAGS.largest,
                      flags.FLAGS.dump_hlo)
  except UserError as e:
    _fail(str(e))
  for line in report_lines(result):
    print(line)
  print(json.dumps(result, sort_keys=True), flush=True)
  sys.exit(0 if result['fits'] else 1)


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=parse_flags)
