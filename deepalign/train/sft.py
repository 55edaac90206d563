"""The SFT stage: masked next-token loss on responses, with Qi et al.'s safety augmentation.

Each batch is `batch_size` rows: (1 - sft.safety_fraction) from the SFT records and the rest
safety-recovery rows (prompt ⊕ harmful prefix of depth k ⊕ refusal, loss on the refusal
only; k = 0 w.p. 0.5 else uniform 1..100 capped at the response length; see
`recovery_examples`). Objectives:
  'nll': -mean log pi(y_t | x, y_<t) over response tokens;
  'token_constrained': Qi et al.'s token-wise constrained loss against the frozen starting
    (aligned) model, whose log-probs are computed once per batch without gradient.
"""


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepalign import models, objectives
from deepalign.data import pipeline
from deepalign.errors import UserError
from deepalign.train import eval_batches, harm_eval, policy_init, recovery_examples, stage_data
from deepalign.train.mixed_batches import MixedBatches
from deepalign.train.sequence_logprobs import logits_chunk_size, target_logprobs
from deepalign.train.task import Task

OBJECTIVES = ('nll', 'token_constrained')


def _split_batch(batch_size: int, fraction: float) -> tuple[int, int]:
  if not 0.0 <= fraction < 1.0:
    raise UserError(f'config.sft.safety_fraction={fraction} must be in [0, 1)')
  n_safe = int(round(batch_size * fraction))
  if fraction > 0 and n_safe == 0:
    raise UserError(f'config.sft.safety_fraction={fraction} of batch_size={batch_size} is no row; '
                    'raise the batch size or the fraction')
  return batch_size - n_safe, n_safe


def _per_source_nll(lp: jax.Array, mask: jax.Array, source_id: jax.Array, i: int) -> jax.Array:
  m = mask * (source_id[:, None] == i)
  return -jnp.sum(lp * m) / jnp.maximum(jnp.sum(m), 1.0)


def build_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
  del workdir
  c = config.sft
  if c.objective not in OBJECTIVES:
    raise UserError(f"config.sft.objective='{c.objective}' is unknown; use one of {', '.join(OBJECTIVES)}")
  data = stage_data.load(config)
  tok, tmpl = data.tokenizer, data.template
  model, init_params = policy_init.build(config, tok, head='lm')
  n_main, n_safe = _split_batch(config.train.batch_size, c.safety_fraction)
  chunk = logits_chunk_size(config)
  main_records = stage_data.records(config, data, c.records, 'train')
  safety_records = (stage_data.records(config, data, 'recovery', 'train',
                                       config.data.safety_builder, config.data.safety_builder_config)
                    if n_safe else None)

  def train_iterator():
    parts = {'main': iter(pipeline.sft_dataset(main_records, tok, tmpl,
                                               stage_data.pipeline_config(config, n_main)))}
    if n_safe:
      parts['safety'] = iter(recovery_examples.sft_rows(
          safety_records, tok, tmpl, stage_data.pipeline_config(config, n_safe, seed_offset=1),
          c.depth_distribution, c.max_depth))
    return MixedBatches(parts)

  def loss_fn(params, frozen, batch, rng):
    del rng
    lp, mask = target_logprobs(model, params, batch, chunk_size=chunk)
    if c.objective == 'nll':
      loss = objectives.nll_loss(lp, mask)
    else:
      aligned, _ = target_logprobs(model, frozen, batch, chunk_size=chunk)
      loss = objectives.token_constrained_loss(lp, jax.lax.stop_gradient(aligned), mask,
                                               segment_ids=batch['segment_ids'][:, 1:])
    metrics = {'nll': objectives.nll_loss(lp, mask), 'nll_main': _per_source_nll(lp, mask, batch['source_id'], 0)}
    if n_safe:
      metrics['nll_safety'] = _per_source_nll(lp, mask, batch['source_id'], 1)
    return loss, metrics

  frozen = None
  if c.objective == 'token_constrained':  # the starting model is the aligned reference
    from deepalign.train.loop import init_rng
    frozen = policy_init.initial_params(config, init_params, init_rng(config))

  eval_sft = eval_batches.take(pipeline.sft_dataset, stage_data.records(config, data, c.records, 'eval'),
                               tok, tmpl, stage_data.pipeline_config(config, config.train.batch_size),
                               c.eval_batches)
  harm = harm_eval.held_out_harm_eval(
      config, data, c.harm_eval, config.train.batch_size, c.eval_batches, c.harm_eval_depths,
      data.env.max_response_words + 1 if data.env is not None else 0)

  @jax.jit
  def eval_nll(params, batch):
    lp, mask = target_logprobs(model, params, batch, chunk_size=chunk)
    return -jnp.sum(lp * mask), jnp.sum(mask)

  def eval_fn(params):
    total = np.zeros(2)
    for batch in eval_sft:
      total += np.asarray(jax.device_get(eval_nll(params, batch)))
    metrics = {'nll': total[0] / max(total[1], 1.0)}
    metrics.update(harm(model, params))
    return metrics

  return Task(init_params=init_params, loss_fn=loss_fn, train_iterator=train_iterator,
              frozen=frozen, eval_fn=eval_fn, finish=policy_init.exporting_finish(model),
              param_axes=models.logical_axes(model))
