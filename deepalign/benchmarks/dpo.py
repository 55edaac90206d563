"""W-tiny "DPO step" (shared/W_TINY.md): 16 pairs, policy fwd+bwd and frozen reference fwd.

  python -m deepalign.benchmarks.dpo [--iters=10] [--warmup=2] [--prompts=PATH]

One step = policy forward + backward on the 32 x 96 stacked chosen/rejected rows, the frozen
reference forward on the same rows, the sigmoid DPO loss (beta 0.1) on summed response
log-probs, one AdamW step (lr 1e-5): the DPO stage's own pieces
(`sequence_logprobs.pair_sequence_logprobs`, `objectives.dpo_loss`) in the generic train step
(`loop.make_train_step`: one jit, state donated), with the stage's `dpo.shared_prefix_len` set
to the prompt length (32): each pair's prompt runs once, not once per row (the same numbers).
Prompts are the W-tiny prompts; chosen / rejected are
`default_rng(4321).integers(3, 2048, size=(2, 16, 63))` followed by EOS. Size flags shrink the
workload for smoke tests; the matmul work (GFLOP, rate reached, this machine's float32 matmul
peak, `seconds_at_peak`) comes from `matmul_work.py`; the last printed line is one JSON object.
"""

import argparse
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from deepalign import objectives
from deepalign.benchmarks import matmul_work, timing, w_tiny, workload
from deepalign.models.transformer import Transformer, init_params
from deepalign.train import pair_rows
from deepalign.train.loop import make_train_step
from deepalign.train.sequence_logprobs import pair_sequence_logprobs
from deepalign.train.state import TrainState

PyTree = Any
BETA = 0.1
LEARNING_RATE = 1e-5
PAIRS_SEED = 4321


def pair_batch(prompts: np.ndarray, new_tokens: int, vocab: int) -> dict[str, np.ndarray]:
  """A preference batch (CONTRACTS "Batches") of prompt ⊕ random chosen / rejected responses.

  prompts [B, P] -> `chosen_*` / `rejected_*` tokens, attention_mask, positions, loss_mask,
  segment_ids, each [B, P + N]; a response is N - 1 random ids then EOS.
  """
  b, p = prompts.shape
  rng = np.random.default_rng(PAIRS_SEED)
  responses = rng.integers(3, vocab, size=(2, b, new_tokens - 1)).astype(np.int32)
  eos = np.full((2, b, 1), w_tiny.EOS_ID, np.int32)
  responses = np.concatenate([responses, eos], axis=2)
  t = p + new_tokens
  loss_mask = np.broadcast_to((np.arange(t) >= p).astype(np.int32), (b, t))
  batch = {}
  for name, response in zip(('chosen', 'rejected'), responses):
    batch[f'{name}_tokens'] = np.concatenate([prompts, response], axis=1)
    batch[f'{name}_attention_mask'] = np.ones((b, t), np.int32)
    batch[f'{name}_positions'] = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t)).copy()
    batch[f'{name}_loss_mask'] = loss_mask.copy()
    batch[f'{name}_segment_ids'] = np.ones((b, t), np.int32)
  return batch


def stage_batch(pairs: dict[str, np.ndarray], shared_prefix_len: int) -> dict[str, np.ndarray]:
  """The pairs as the DPO stage's iterator hands them to the step with `dpo.shared_prefix_len`
  (`pair_rows.WithSharedPrefix`; 0 = off, every row in full)."""
  return pair_rows.mark_shared_prefix(pairs, shared_prefix_len) if shared_prefix_len else pairs


def make_loss(model: Transformer):
  """The DPO stage's on-the-fly-reference loss: sigmoid, beta 0.1, summed log-probs."""

  def sequence_logps(params: PyTree, batch: Mapping[str, jax.Array]):
    return pair_sequence_logprobs(model, params, batch)[:2]

  def loss_fn(params: PyTree, frozen: PyTree, batch: Mapping[str, jax.Array], rng: jax.Array):
    del rng
    chosen, rejected = sequence_logps(params, batch)
    ref_chosen, ref_rejected = jax.lax.stop_gradient(sequence_logps(frozen, batch))
    return objectives.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=BETA,
                               loss_type='sigmoid')

  return loss_fn


def run(sizes: workload.Sizes, iters: int = 10, warmup: int = 2, seed: int = 0,
        prompts_path: str | None = None) -> dict[str, Any]:
  """Times the jitted DPO step on the (possibly reduced) W-tiny workload."""
  peak = matmul_work.measure_matmul_peak()  # first, before this process holds other programs
  model = Transformer(sizes.config('lm'))
  params = init_params(model, jax.random.key(seed + w_tiny.POLICY_SEED))
  reference = jax.tree.map(jnp.copy, params)  # the state is donated; the reference is not
  tx = optax.adamw(LEARNING_RATE, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0)
  step = make_train_step(make_loss(model), tx, optax.constant_schedule(LEARNING_RATE))
  pairs = pair_batch(workload.prompts(sizes, prompts_path), sizes.new_tokens, sizes.vocab)
  batch = jax.tree.map(jnp.asarray, stage_batch(pairs, sizes.prompt_len))
  timings, _, metrics = timing.time_state_steps(
      step, TrainState.create(params, tx, jax.random.key(seed + 3)), (reference, batch), iters,
      warmup)
  bad = [k for k, v in metrics.items() if not np.all(np.isfinite(np.asarray(v)))]
  if bad:
    raise RuntimeError(f'non-finite DPO metrics: {bad}')
  return {
      'benchmark': 'w_tiny_dpo_step', **timing.environment(), **sizes.describe(),
      'pairs': sizes.batch, 'rows': 2 * sizes.batch, 'seq_len': sizes.prompt_len + sizes.new_tokens,
      'iters': iters, 'warmup': warmup,
      'seconds_per_step': timings.median, **timings.summary('step'),
      'first_call_s': timings.first_call_s,
      'loss': float(metrics['loss']),
      **matmul_work.work_figures(matmul_work.dpo_step_flops(sizes, sizes.prompt_len),
                                 timings.median, peak),
      'peak_rss_mb': timing.peak_rss_mb(),
  }


def format_summary(result: dict[str, Any]) -> str:
  """The human-readable lines printed before the JSON."""
  return '\n'.join([
      f'deepalign DPO step ({result["workload"]}): {result["seconds_per_step"]:.4f} s/step '
      f'(median of {result["iters"]} after {result["warmup"]} warm-ups), '
      f'{result["rows"]} x {result["seq_len"]} tokens, {result["step_cpu_median_s"]:.3f} '
      f'CPU-s/step, peak RSS {result["peak_rss_mb"]:.0f} MB, '
      f'first call {result["first_call_s"]:.1f} s, load {result["load_avg_1m"]}',
      matmul_work.format_work(result)])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m deepalign.benchmarks.dpo',
                                   description=__doc__.split('\n')[0])
  workload.add_arguments(parser, iters=10, warmup=2)
  args = parser.parse_args(argv)
  return workload.report(lambda: run(workload.sizes_from_args(args), args.iters, args.warmup,
                                     args.seed, args.prompts), format_summary)


if __name__ == '__main__':
  sys.exit(main())
