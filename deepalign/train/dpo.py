"""The DPO stage: sigmoid / IPO / hinge losses against a frozen reference, and DPO-recovery.

Plain DPO pairs come from preference records. DPO-recovery pairs (Qi et al.'s augmentation
in DPO form) start from prompt ⊕ harmful prefix ỹ_≤k: chosen = a refusal, rejected = the
harmful continuation ỹ_>k (`recovery_examples.preference_rows`). `dpo.recovery_fraction`
is the share of every batch given to recovery pairs (1 = DPO-recovery only).

`dpo.rpo_alpha` > 0 adds alpha * NLL(chosen) (RPO, Pang et al. 2024; TRL's rpo_alpha), which
keeps the chosen responses likely while their margin over the rejected ones grows.

The reference is the starting policy. `dpo.reference`:
  'on_the_fly': its log-probs are a forward pass inside the train step (frozen params);
  'precomputed': one pass over the preference data before training (no recovery pairs:
    their prefix depths are drawn afresh every epoch), then only the policy is in memory.
"""

import itertools

import jax
import ml_collections
import numpy as np

from deepalign import models, objectives
from deepalign.data import pipeline
from deepalign.errors import UserError
from deepalign.train import (eval_batches, harm_eval, pair_rows, policy_init, recovery_examples,
                             reference_logprobs, stage_data)
from deepalign.train.mixed_batches import MixedBatches
from deepalign.train.sequence_logprobs import logits_chunk_size, pair_sequence_logprobs
from deepalign.train.task import Task

REFERENCE_MODES = ('on_the_fly', 'precomputed')


def build_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
  del workdir
  c = config.dpo
  if c.reference not in REFERENCE_MODES:
    raise UserError(f"config.dpo.reference='{c.reference}' is unknown; use one of {', '.join(REFERENCE_MODES)}")
  if not 0.0 <= c.recovery_fraction <= 1.0:
    raise UserError(f'config.dpo.recovery_fraction={c.recovery_fraction} must be in [0, 1]')
  if not isinstance(c.shared_prefix_len, int) or c.shared_prefix_len < 0:
    raise UserError(f'config.dpo.shared_prefix_len={c.shared_prefix_len!r} must be an integer >= 0 '
                    '(0 = off; else how many leading tokens every pair shares, e.g. the prompt length)')
  if c.reference == 'precomputed' and c.recovery_fraction > 0:
    raise UserError("config.dpo.reference='precomputed' cannot serve recovery pairs (their depths "
                    "are redrawn every epoch); use 'on_the_fly' or recovery_fraction=0")
  # Validate loss settings now, not at the first traced step.
  objectives.dpo._check(c.loss_type, c.beta, c.label_smoothing)
  data = stage_data.load(config)
  tok, tmpl = data.tokenizer, data.template
  model, init_params = policy_init.build(config, tok, head='lm')
  batch_size = config.train.batch_size
  n_rec = int(round(batch_size * c.recovery_fraction))
  n_pref = batch_size - n_rec
  pref_records = stage_data.records(config, data, 'preference', 'train') if n_pref else None
  rec_records = (stage_data.records(config, data, 'recovery', 'train', config.data.safety_builder,
                                    config.data.safety_builder_config) if n_rec else None)
  average = c.loss_type == 'ipo'  # TRL: IPO length-normalises the sequence log-probs
  chunk = logits_chunk_size(config)

  shared = int(c.shared_prefix_len)

  def sequence_logps(params, batch, with_nll: bool = False):
    # with_nll: RPO's term too, the mean NLL of the chosen responses' tokens (TRL rpo_alpha).
    chosen, rejected, nll = pair_sequence_logprobs(model, params, batch, average, chunk)
    return (chosen, rejected, nll) if with_nll else (chosen, rejected)

  from deepalign.train.loop import init_rng
  reference = policy_init.initial_params(config, init_params, init_rng(config))
  table = None
  if c.reference == 'precomputed':
    ref_fn = jax.jit(lambda batch: sequence_logps(reference, batch))
    # Two unshuffled epochs, cut after enough batches to cover the first whole: full batches
    # (static shapes) then still reach every row.
    once = pipeline.preference_dataset(pref_records, tok, tmpl, stage_data.pipeline_config(
        config, n_pref, shuffle=False, num_epochs=2))
    num_batches = -(-len(pref_records) // n_pref) + 1
    table = reference_logprobs.precompute(itertools.islice(iter(once), num_batches), ref_fn)
    reference = None  # the point of precomputing: the reference leaves memory

  def train_iterator():
    parts = {}
    if n_pref:
      parts['preference'] = iter(pipeline.preference_dataset(
          pref_records, tok, tmpl, stage_data.pipeline_config(config, n_pref)))
    if n_rec:
      parts['recovery'] = iter(recovery_examples.preference_rows(
          rec_records, tok, tmpl, stage_data.pipeline_config(config, n_rec, seed_offset=1),
          c.depth_distribution, c.max_depth))
    batches = MixedBatches(parts)
    if shared:
      batches = pair_rows.WithSharedPrefix(batches, shared)
    return reference_logprobs.WithReferenceLogprobs(batches, table) if table is not None else batches

  def loss_fn(params, frozen, batch, rng):
    del rng
    chosen, rejected, chosen_nll = sequence_logps(params, batch, with_nll=True)
    if frozen is None:
      ref_chosen, ref_rejected = batch['ref_chosen_logps'], batch['ref_rejected_logps']
    else:
      ref_chosen, ref_rejected = jax.lax.stop_gradient(sequence_logps(frozen, batch))
    loss, metrics = objectives.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta=c.beta,
                                        loss_type=c.loss_type, label_smoothing=c.label_smoothing)
    metrics = {**metrics, 'dpo_loss': loss, 'chosen_nll': chosen_nll}
    if c.rpo_alpha:
      loss = loss + c.rpo_alpha * chosen_nll
    return loss, metrics

  held_out = []
  if n_pref:
    held_out = eval_batches.take(pipeline.preference_dataset,
                                 stage_data.records(config, data, 'preference', 'eval'), tok, tmpl,
                                 stage_data.pipeline_config(config, batch_size), c.eval_batches)
  harm = harm_eval.held_out_harm_eval(
      config, data, c.harm_eval, batch_size, c.eval_batches, c.harm_eval_depths,
      data.env.max_response_words + 1 if data.env is not None else 0)

  @jax.jit
  def policy_margin(params, batch):
    chosen, rejected = sequence_logps(params, batch)
    return chosen - rejected

  # The reference's margins on the fixed held-out pairs never change: compute them once.
  start = reference if reference is not None else init_params(init_rng(config))
  ref_margins = [np.asarray(policy_margin(start, b)) for b in held_out]
  del start

  def eval_fn(params):
    metrics = {}
    if held_out:
      wins = [np.asarray(policy_margin(params, b)) > m for b, m in zip(held_out, ref_margins)]
      metrics['reward_accuracy'] = float(np.mean(np.concatenate(wins)))
    metrics.update(harm(model, params))
    return metrics

  return Task(init_params=init_params, loss_fn=loss_fn, train_iterator=train_iterator,
              frozen=reference, eval_fn=eval_fn, finish=policy_init.exporting_finish(model),
              param_axes=models.logical_axes(model))
