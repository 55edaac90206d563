"""deepalign side by side with its peers on the W-tiny workload, in one process, one table.

  python -m deepalign.benchmarks.compare [--rounds=2] [--work=ppo,dpo,grpo,generation]
                                         [--peers=auto|none] [--torch_threads=0] [size flags]

Runs deepalign's W-tiny PPO iteration, DPO step, GRPO step and generation (the same programs
as `ppo.py`, `dpo.py`, `grpo.py`, `generation.py`) and, where the `hf` extra is installed, the
same work by its peers on the same weights (deepalign's HF export loaded into transformers):

  PPO iteration:  plain torch + transformers (`peers_torch.TorchPPO`; TRL >= 1 has no PPOTrainer)
  DPO step:       plain torch + transformers (`peers_torch.TorchDPO`), TRL DPOTrainer
  GRPO step:      TRL GRPOTrainer (transformers `generate`, no vLLM)
  generation:     transformers `generate`

Each round measures this machine's float32 matmul peak (`matmul_work.measure_matmul_peak`),
then times every contender of every work (warm-ups, then `--iters` calls), deepalign first in
even rounds and last in odd ones, so a drift of the machine's speed hits both sides alike.
Prints one Markdown table: per work and implementation the median over all timed calls of all
rounds, the per-round medians, the ratio peer / deepalign (> 1: deepalign is faster), and
deepalign's matmul rate as a fraction of the best peak of the run; the last line is one JSON
object. Without torch / transformers (or trl) it says so and prints the deepalign rows.
Size flags shrink every work alike (the JSON then says "workload": "reduced").
"""

import argparse
import dataclasses
import importlib
import shutil
import statistics
import sys
import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepalign import models, rollout
from deepalign.benchmarks import dpo, grpo, matmul_work, ppo, timing, w_tiny, workload
from deepalign.benchmarks.timing import Timings
from deepalign.errors import UserError
from deepalign.train.loop import make_train_step
from deepalign.train.rl.grpo_step import make_grpo_step
from deepalign.train.rl.ppo_step import make_ppo_step
from deepalign.train.state import TrainState

WORKS = ('ppo', 'dpo', 'grpo', 'generation')
LABELS = {'ppo': 'PPO iteration', 'dpo': 'DPO step', 'grpo': 'GRPO step',
          'generation': 'generation'}
# W_TINY.md's timed calls per work (after the warm-ups).
ITERS = {'ppo': 7, 'dpo': 10, 'grpo': 7, 'generation': 10}


@dataclasses.dataclass(frozen=True)
class Contender:
  """One implementation of one work: `time(iters, warmup)` runs and times it."""
  work: str
  key: str  # 'deepalign', 'torch' or 'trl'
  label: str
  time: Callable[[int, int], Timings]
  flops: float | None = None  # deepalign's matmul FLOPs per call (matmul_work)


def _state_timer(step: Callable, state: Any, args: tuple, check: Callable[[Any], None]
                 ) -> Callable[[int, int], Timings]:
  """time(iters, warmup) for a donating train step; the state carries over between rounds."""
  holder = {'state': state}

  def time(iters: int, warmup: int) -> Timings:
    timings, holder['state'], metrics = timing.time_state_steps(step, holder['state'], args,
                                                                iters, warmup)
    check(metrics)
    return timings

  return time


def _finite(name: str) -> Callable[[Any], None]:
  def check(metrics):
    bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
    if bad:
      raise RuntimeError(f'non-finite {name} metrics: {bad}')
  return check


def _copy(tree: Any) -> Any:
  """Fresh buffers: each step donates its own, never the run's shared initial params."""
  return jax.tree.map(jnp.copy, tree)


def deepalign_ppo(sizes: workload.Sizes, seed: int, prompts_path: str | None,
                  params: dict[str, Any]) -> Contender:
  rl_models, config, tx, state, batch = ppo.build(sizes, seed, prompts_path, _copy(params))
  flops = matmul_work.ppo_iteration_flops(sizes, config.rollout.logprobs_from_sampler,
                                          config.epochs)['total']
  check = lambda metrics: ppo._check_metrics(metrics, sizes.new_tokens)
  return Contender('ppo', 'deepalign', 'deepalign',
                   _state_timer(make_ppo_step(rl_models, config, tx), state, (batch,), check),
                   flops)


def deepalign_dpo(sizes: workload.Sizes, seed: int, prompts_path: str | None,
                  params: dict[str, Any]) -> Contender:
  """The step of `dpo.run`: the DPO stage's loss in the generic train step."""
  model = models.Transformer(sizes.config('lm'))
  reference = _copy(params['lm'])  # the state is donated; the reference is not
  params = _copy(params['lm'])
  tx = optax.adamw(dpo.LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
  step = make_train_step(dpo.make_loss(model), tx, optax.constant_schedule(dpo.LEARNING_RATE))
  batch = jax.tree.map(jnp.asarray, dpo.stage_batch(dpo_pairs(sizes, prompts_path),
                                                    sizes.prompt_len))
  state = TrainState.create(params, tx, jax.random.key(seed + 3))
  return Contender('dpo', 'deepalign', 'deepalign',
                   _state_timer(step, state, (reference, batch), _finite('DPO')),
                   matmul_work.dpo_step_flops(sizes, sizes.prompt_len))


def deepalign_grpo(sizes: workload.Sizes, seed: int, prompts_path: str | None,
                   params: dict[str, Any]) -> Contender:
  rl_models, config, tx, state, batch = grpo.build(
      sizes, seed, prompts_path, _copy({k: params[k] for k in ('lm', 'score')}))
  check = lambda metrics: ppo._check_metrics(metrics, sizes.new_tokens)
  return Contender('grpo', 'deepalign', 'deepalign',
                   _state_timer(make_grpo_step(rl_models, config, tx), state, (batch,), check),
                   grpo.step_flops(sizes)['total'])


def deepalign_generation(sizes: workload.Sizes, seed: int, prompts_path: str | None,
                         params: dict[str, Any]) -> Contender:
  """`rollout.generate` as `generation.py` times it, at `sizes`."""
  prompts = jnp.asarray(workload.prompts(sizes, prompts_path))
  model = models.Transformer(sizes.config('lm'))
  params = params['lm']  # not donated
  config = w_tiny.sampling_config(sizes.new_tokens)
  key = jax.random.key(seed + 1)
  calls = {'n': 0}

  def time(iters: int, warmup: int) -> Timings:
    holder = {}

    def run(i: int):
      del i
      calls['n'] += 1  # a fresh sampling key per call, across rounds too
      holder['out'] = rollout.generate(model, params, prompts, jnp.ones_like(prompts),
                                       jax.random.fold_in(key, calls['n']), config=config)
      return holder['out']

    timings = timing.time_calls(run, iters, warmup)
    if int(holder['out'].lengths.min()) != sizes.new_tokens:
      raise RuntimeError(f'expected {sizes.new_tokens} tokens per row, got {holder["out"].lengths}')
    return timings

  return Contender('generation', 'deepalign', 'deepalign', time,
                   matmul_work.generation_flops(sizes))


DEEPALIGN = {'ppo': deepalign_ppo, 'dpo': deepalign_dpo, 'grpo': deepalign_grpo,
             'generation': deepalign_generation}


def dpo_pairs(sizes: workload.Sizes, prompts_path: str | None) -> dict[str, np.ndarray]:
  return dpo.pair_batch(workload.prompts(sizes, prompts_path), sizes.new_tokens, sizes.vocab)


def export_weights(sizes: workload.Sizes, params: dict[str, Any], out_dir: str
                   ) -> dict[str, str]:
  """deepalign's initial policy / value / reward params (`ppo.initial_params`), saved as HF
  checkpoints for the peers: both sides start from one set of weights."""
  dirs = {}
  for name, head in (('policy', 'lm'), ('value', 'value'), ('reward', 'score')):
    dirs[name] = f'{out_dir}/{name}'
    models.save_pretrained(models.Transformer(sizes.config(head)), params[head], dirs[name])
  return dirs


def import_peers(mode: str) -> tuple[dict[str, Any], dict[str, str]]:
  """{'torch': peers_torch, 'trl': peers_trl} for what imports, and why the others are out."""
  if mode == 'none':
    return {}, {'torch': 'not run (--peers=none)', 'trl': 'not run (--peers=none)'}
  loaded, missing = {}, {}
  for key, module, needs in (('torch', 'peers_torch', 'torch and transformers'),
                             ('trl', 'peers_trl', 'trl')):
    if key == 'trl' and 'torch' not in loaded:
      missing[key] = 'not run: needs torch and transformers too'
      continue
    try:
      loaded[key] = importlib.import_module(f'deepalign.benchmarks.{module}')
    except ImportError as e:
      missing[key] = (f'not run: {needs} not importable ({e}); pip install -e ".[hf]" '
                      'for the side-by-side')
  return loaded, missing


def peer_contenders(peers: dict[str, Any], works: tuple[str, ...], sizes: workload.Sizes,
                    seed: int, prompts_path: str | None, dirs: dict[str, str]
                    ) -> list[Contender]:
  """The peers' implementations of `works`, built on the exported weights."""
  out = []
  pt, trl_peers = peers.get('torch'), peers.get('trl')
  prompts = workload.prompts(sizes, prompts_path)
  p, n = sizes.prompt_len, sizes.new_tokens
  if pt is None:
    return out

  def timed(runner) -> Callable[[int, int], Timings]:
    return lambda iters, warmup: timing.time_calls(pt.stepper(runner), iters, warmup)

  torch_label = f'torch {pt.torch.__version__.split("+")[0]} + transformers {pt.transformers.__version__}'
  if 'ppo' in works:
    out.append(Contender('ppo', 'torch', torch_label, timed(pt.TorchPPO(dirs, prompts, n))))
  if 'dpo' in works:
    pairs = dpo_pairs(sizes, prompts_path)
    out.append(Contender('dpo', 'torch', torch_label, timed(pt.TorchDPO(dirs, pairs, p))))
    if trl_peers is not None:
      out.append(Contender('dpo', 'trl', f'TRL {trl_peers.trl.__version__} DPOTrainer',
                           trl_peers.TrlDPO(dirs, pairs, p, sizes.vocab, seed).time))
  if 'grpo' in works and trl_peers is not None:
    runner = trl_peers.TrlGRPO(dirs, prompts[:grpo.num_prompts(sizes)], grpo.GROUP_SIZE, n,
                               sizes.vocab, grpo.BETA, seed)
    out.append(Contender('grpo', 'trl', f'TRL {trl_peers.trl.__version__} GRPOTrainer',
                         runner.time))
  if 'generation' in works:
    out.append(Contender('generation', 'torch', f'transformers {pt.transformers.__version__} '
                         '`generate`', timed(pt.TorchGeneration(dirs, prompts, n))))
  return out


def _figures(timings: list[Timings]) -> dict[str, Any]:
  """Pooled median / min / max over every timed call of every round, and each round's median."""
  times = [t for one in timings for t in one.times]
  cpu = [t for one in timings for t in one.cpu_times]
  return {'median_s': statistics.median(times), 'min_s': min(times), 'max_s': max(times),
          'cpu_median_s': statistics.median(cpu), 'calls': len(times),
          'round_medians_s': [one.median for one in timings],
          'first_call_s': timings[0].first_call_s}


def run(sizes: workload.Sizes, rounds: int = 2, works: tuple[str, ...] = WORKS,
        iters: int = 0, warmup: int = 2, seed: int = 0, prompts_path: str | None = None,
        peers_mode: str = 'auto', torch_threads: int = 0) -> dict[str, Any]:
  """Builds every contender, times them round by round, returns the JSON result."""
  if rounds < 1:
    raise UserError(f'--rounds={rounds} must be >= 1.')
  unknown = [w for w in works if w not in WORKS]
  if unknown or not works:
    raise UserError(f'--work={",".join(works)}: choose from {",".join(WORKS)}.')
  if 'grpo' in works:
    grpo.num_prompts(sizes)  # the rollouts must be whole groups, before anything is built
  counts = {w: iters or ITERS[w] for w in works}
  peaks = [matmul_work.measure_matmul_peak()]  # first, before this process holds other programs
  # One init per model for every work and the peers' export (each init is a compile).
  params = ppo.initial_params(sizes, seed)
  contenders = [DEEPALIGN[w](sizes, seed, prompts_path, params) for w in works]
  # The exported weights stay on disk for the whole run: GRPOTrainer loads its reference
  # from the policy's directory whenever a round builds the trainer.
  tmp = tempfile.mkdtemp(prefix='deepalign_compare_')
  try:
    return _run_rounds(sizes, rounds, works, counts, warmup, seed, prompts_path, peers_mode,
                       torch_threads, peaks, contenders, params, tmp)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _run_rounds(sizes, rounds, works, counts, warmup, seed, prompts_path, peers_mode,
                torch_threads, peaks, contenders, params, tmp) -> dict[str, Any]:
  """`run` past its checks: imports and builds the peers (weights exported into `tmp`),
  then times every contender round by round."""
  peers, missing = import_peers(peers_mode)
  notes = dict(missing)
  if peers:
    peers['torch'].setup(seed, torch_threads)
    dirs = export_weights(sizes, params, tmp)
    contenders = contenders + peer_contenders(peers, works, sizes, seed, prompts_path, dirs)
    if 'trl' in peers and 'ppo' in works and not hasattr(peers['trl'].trl, 'PPOTrainer'):
      notes['trl_ppo'] = f'TRL {peers["trl"].trl.__version__} has no PPOTrainer (removed in TRL 1)'
  timed: dict[tuple[str, str], list[Timings]] = {(c.work, c.key): [] for c in contenders}
  for r in range(rounds):
    if r:
      peaks.append(matmul_work.measure_matmul_peak())
    for work in works:
      mine = [c for c in contenders if c.work == work]
      ordered = mine if r % 2 == 0 else mine[1:] + mine[:1]  # deepalign first, then last
      for c in ordered:
        timed[(c.work, c.key)].append(c.time(counts[work], warmup))
  peak = max(peaks, key=lambda p: p.gflops)
  results: dict[str, dict[str, Any]] = {}
  for c in contenders:
    entry = {'label': c.label, **_figures(timed[(c.work, c.key)])}
    results.setdefault(c.work, {})[c.key] = entry
  for work, entries in results.items():
    base = entries['deepalign']
    deepalign_c = next(c for c in contenders if c.work == work and c.key == 'deepalign')
    base.update(matmul_work.work_figures(deepalign_c.flops, base['median_s'], peak))
    for key, entry in entries.items():
      if key != 'deepalign':
        entry['ratio_to_deepalign'] = entry['median_s'] / base['median_s']
  versions = {}
  for module in peers.values():
    versions.update(module.versions())
  return {'benchmark': 'w_tiny_compare', **timing.environment(), **sizes.describe(),
          'rounds': rounds, 'warmup': warmup, 'iters': counts, 'seed': seed,
          'matmul_peak_gflops': peak.gflops, 'matmul_peak_size': peak.size,
          'matmul_peak_per_round_gflops': [p.gflops for p in peaks], **versions,
          'notes': notes, 'results': results, 'peak_rss_mb': timing.peak_rss_mb()}


def format_table(result: dict[str, Any]) -> str:
  """The Markdown table (and the notes above it) printed before the JSON line."""
  lines = [f'W-tiny side by side ({result["workload"]}, {result["rounds"]} round(s), '
           f'{result["device"]}, {result["cpu_count"]} CPUs, load {result["load_avg_1m"]}): '
           'medians of all timed calls; peer / deepalign > 1 means deepalign is faster; '
           f'float32 matmul peak of this run {result["matmul_peak_gflops"]:.0f} GFLOP/s '
           f'({result["matmul_peak_size"]}^2, best of the rounds)']
  lines += [f'note: {key}: {text}' for key, text in result['notes'].items()]
  lines += ['',
            '| work | implementation | median s | round medians s | peer / deepalign | '
            "deepalign's share of the matmul peak |",
            '|---|---|---|---|---|---|']
  for work, entries in result['results'].items():
    for i, (key, e) in enumerate(entries.items()):
      rounds = ' / '.join(f'{s:.3f}' for s in e['round_medians_s'])
      if key == 'deepalign':
        ratio = '1'
        share = (f'{e["fraction_of_peak"]:.0%} ({e["achieved_gflops"]:.0f} GFLOP/s of '
                 f'{e["matmul_gflop"]:.1f} GFLOP; floor {e["seconds_at_peak"]:.3f} s)')
      else:
        ratio, share = f'{e["ratio_to_deepalign"]:.2f}x', ''
      name = LABELS[work] if i == 0 else ''
      lines.append(f'| {name} | {e["label"]} | {e["median_s"]:.3f} | {rounds} | {ratio} | '
                   f'{share} |')
  return '\n'.join(lines)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m deepalign.benchmarks.compare',
                                   description=__doc__.split('\n')[0])
  workload.add_arguments(parser, iters=0, warmup=2)
  parser.add_argument('--rounds', type=int, default=2, help='rounds of every contender')
  parser.add_argument('--work', default=','.join(WORKS),
                      help=f'comma-separated subset of {",".join(WORKS)}')
  parser.add_argument('--peers', choices=('auto', 'none'), default='auto',
                      help='auto: every peer whose packages import; none: deepalign only')
  parser.add_argument('--torch_threads', type=int, default=0,
                      help='torch.set_num_threads for the peers (0: torch default)')
  parser._option_string_actions['--iters'].help = (
      'timed calls per round and work (0: W_TINY.md\'s counts, ' +
      ', '.join(f'{w} {n}' for w, n in ITERS.items()) + ')')
  args = parser.parse_args(argv)
  return workload.report(lambda: run(workload.sizes_from_args(args), args.rounds,
                                     tuple(w for w in args.work.split(',') if w), args.iters,
                                     args.warmup, args.seed, args.prompts, args.peers,
                                     args.torch_threads), format_table)


if __name__ == '__main__':
  sys.exit(main())
