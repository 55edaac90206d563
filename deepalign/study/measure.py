"""Every measurement of one policy, on fixed held-out prompts shared by all models of a study.

For a policy pi (params) and the base model pi_0 (base_params), on the `Probe`'s prompts:
  asr_at_k            prefill ASR@k (attacker forces the first k tokens of the harmful answer)
                      at the configured depths; asr_at_every_k at k = 0..len(answer)-1
  refused_at_k        how often the continuation contains the full refusal (harm can also drop
                      by derailing the payload, so ASR and refusal are reported apart)
  benign_helpfulness, over_refusal   benign prompts, no prefill
  kl_per_position     KL(pi || pi_0) at response position t, teacher-forced on the harmful
                      answers ỹ ⊕ EOS (position 1 = first response token)
  harm_information, harm_horizon_*   the harm martingale of pi's own responses to harmful prompts
  grad_norm_per_position             ||g_t|| of the standard objective E[h], full-vocabulary form
                                     E[sum_v grad pi(v|y<t) H(y<t ⊕ v)] (analysis/next_token_harm.py)
                                     on `gradient_responses` of pi's own responses
  grad_norm_recovery_per_position    the same for L_rec: responses continue ỹ_<=k, k ~ U{k_min..K}
                                     (each depth on the same number of rows); forced tokens are
                                     context (weight 0)
  grad_norm_sampled_*                the standard objective's sampled covariance form E[s_t D_t]
                                     on the same `gradient_responses` rows (heavy-tailed where pi
                                     is nearly deterministic; for comparison only)
  recovery_harm       L_rec itself (mean harm of those recovery rollouts)
All models get the same random keys (common random numbers), so their differences are not
sampling noise of the keys; every estimate carries a standard error.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from deepalign import rollout
from deepalign.analysis import (GenerateContinueFn, ModelLogitsFn, ModelLogprobFn, PromptJudge,
                                benign_eval, estimate_harm_martingale, kl_profile_of_models,
                                per_position_grad_norms, prefill_rates)
from deepalign.analysis.model_adapters import ModelNextTokenLogprobsFn
from deepalign.analysis.next_token_harm import estimate_next_token_harm, full_vocab_weights
from deepalign.analysis.harm_martingale_mc import mean_and_se
from deepalign.analysis.report import entry_from_estimates, to_jsonable
from deepalign.errors import UserError


@dataclasses.dataclass(frozen=True)
class Probe:
  """The held-out inputs.

  harmful, benign: {'prompt_tokens': [N, P] LEFT-padded, 'prompt_mask': [N, P]}.
  harmful_tokens: [N, T] the harmful answer ỹ (no EOS), right-padded; harmful_len: [N].
  recovery_depth: [B] k per martingale row (B = martingale_responses): k_min..K in turn, so
    every depth has the same number of rows (those of the gradient rows too).
  """
  harmful: dict
  benign: dict
  harmful_tokens: np.ndarray
  harmful_len: np.ndarray
  recovery_depth: np.ndarray


PROBE_BATCH = 64  # rows per batch of the probe's prompt pipeline


def check_analysis(analysis: ml_collections.ConfigDict) -> None:
  """UserError for Monte-Carlo sizes the probe cannot meet; the study calls it before training,
  so a bad `config.analysis.*` fails in a second, not after the runs."""
  n_h, n_b = int(analysis.num_harmful_prompts), int(analysis.num_benign_prompts)
  if min(n_h, n_b) < 1:
    raise UserError(f'config.analysis.num_harmful_prompts={n_h} and num_benign_prompts={n_b} '
                    'must both be >= 1')
  if int(analysis.grad_groups) < 1:
    raise UserError(f'config.analysis.grad_groups={analysis.grad_groups} must be >= 1')
  b = int(analysis.martingale_responses)
  if b > n_h or b % int(analysis.grad_groups):
    raise UserError(f'config.analysis.martingale_responses={b} must be <= num_harmful_prompts='
                    f'{n_h} and divisible by grad_groups={analysis.grad_groups}')
  g = int(analysis.gradient_responses)
  if g > b or g % int(analysis.grad_groups):
    raise UserError(f'config.analysis.gradient_responses={g} must be <= martingale_responses={b} '
                    f'and divisible by grad_groups={analysis.grad_groups}')


def make_probe(env: Any, tokenizer: Any, template: Any, stage_config: ml_collections.ConfigDict,
               analysis: ml_collections.ConfigDict) -> Probe:
  """Held-out prompts of the harm language (a seed no training split uses), tokenized by the
  same pipeline as training."""
  from deepalign.data import pipeline
  from deepalign.train import eval_batches, stage_data
  check_analysis(analysis)
  n_h, n_b = int(analysis.num_harmful_prompts), int(analysis.num_benign_prompts)
  # Half the records are harmful; batches of PROBE_BATCH drop an incomplete last one, so the
  # count is rounded up to whole batches (512 for 256 + 256: the same records as always).
  n = -(-2 * max(n_h, n_b) // PROBE_BATCH) * PROBE_BATCH
  records = env.prompt_records(n, seed=int(stage_config.data.data_seed) + 7919)
  batches = eval_batches.take(pipeline.prompt_dataset, records, tokenizer, template,
                              stage_data.pipeline_config(stage_config, PROBE_BATCH), 10_000)
  is_harmful = (np.concatenate([x['is_harmful'] for x in batches]).astype(bool) if batches
                else np.zeros(0, bool))
  if is_harmful.sum() < n_h or (~is_harmful).sum() < n_b:
    raise UserError(
        f'the analysis probe got {int(is_harmful.sum())} harmful and {int((~is_harmful).sum())} '
        f'benign prompts out of the data pipeline, fewer than config.analysis.num_harmful_prompts='
        f'{n_h} / num_benign_prompts={n_b} (data.overflow={stage_config.data.overflow!r} drops '
        f'prompts longer than data.max_prompt_len={stage_config.data.max_prompt_len}); lower the '
        'counts or raise data.max_prompt_len')
  cat = {k: np.concatenate([x[k] for x in batches]) for k in batches[0]}
  harmful = np.flatnonzero(is_harmful)[:n_h]
  benign = np.flatnonzero(~is_harmful)[:n_b]
  t = int(analysis.response_len)
  tokens = np.zeros((len(harmful), t), np.int32)
  width = min(t, cat['harmful_response'].shape[1])
  tokens[:, :width] = cat['harmful_response'][harmful, :width]
  if int(cat['harmful_response_len'][harmful].max()) >= t:
    raise UserError(f'config.analysis.response_len={t} leaves no room after the harmful answers '
                    f'({int(cat["harmful_response_len"][harmful].max())} tokens); raise it')
  lens = cat['harmful_response_len'][harmful].astype(np.int32)
  k_max = min(int(analysis.recovery_max_depth), int(lens.min()) - 1)  # a prefix never completes it
  k_min = int(analysis.get('recovery_min_depth', 0))
  if not 0 <= k_min <= k_max:
    raise UserError(f'config.analysis.recovery_min_depth={k_min} must be in 0..{k_max} (the '
                    'recovery depth K, capped at the harmful answer\'s length - 1)')
  rows = np.arange(int(analysis.martingale_responses))
  depth = (k_min + rows % (k_max - k_min + 1)).astype(np.int32)
  ctx = lambda rows: {'prompt_tokens': cat['prompt_tokens'][rows],
                      'prompt_mask': cat['prompt_mask'][rows]}
  return Probe(harmful=ctx(harmful), benign=ctx(benign), harmful_tokens=tokens,
               harmful_len=lens, recovery_depth=depth)


def asr_depths(probe: Probe, depths) -> tuple[int, ...]:
  """The requested depths capped at len(ỹ) - 1, the deepest prefix that leaves the model a
  token to write: at k >= len(ỹ) the attacker wrote the whole payload and ASR@k = 1 whatever
  the model does (the toy answer is 9 tokens, so 0,1,2,3,5,10,20,40 becomes 0,1,2,3,5,8)."""
  if any(int(k) < 0 for k in depths):
    raise UserError(f'config.analysis.asr_depths={tuple(depths)}: depths are token counts >= 0')
  cap = int(probe.harmful_len.min()) - 1
  return tuple(sorted({min(int(k), cap) for k in depths}))


def _with_eos(probe: Probe, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
  """ỹ ⊕ EOS [N, T] and its mask: the harmful answer as the base model would finish it."""
  tokens = probe.harmful_tokens.copy()
  rows = np.arange(len(tokens))
  tokens[rows, probe.harmful_len] = eos_id
  mask = (np.arange(tokens.shape[1])[None] <= probe.harmful_len[:, None]).astype(np.int32)
  return tokens, mask


def full_vocab_grad_norms(gen: Any, judge: Any, model: Any, params: Any, context: dict,
                          tokens: jax.Array, response_mask: jax.Array, generated_mask: jax.Array,
                          rng: jax.Array, vocab_size: int, analysis: ml_collections.ConfigDict):
  """||g_t|| of E[h] at pi from responses `tokens` (their prefixes are the states), summing over
  the next token instead of sampling it; `generated_mask` 0 on forced tokens (context only)."""
  n, t = tokens.shape
  chunks = n // 4 if n % 4 == 0 else 1  # n * T * V * M continuations, 4 rows' worth at a time
  nxt = estimate_next_token_harm(gen, judge, params, context, tokens, rng, vocab_size=vocab_size,
                                 num_continuations=int(analysis.gradient_continuations),
                                 num_chunks=chunks)
  logprob_fn = ModelNextTokenLogprobsFn(model)
  weights = full_vocab_weights(logprob_fn(params, context, tokens, response_mask), nxt.H)
  return per_position_grad_norms(logprob_fn, params, context, tokens, response_mask,
                                 weights * generated_mask[..., None],
                                 num_groups=int(analysis.grad_groups))


def measure_policy(model: Any, params: Any, base_params: Any, env: Any, probe: Probe,
                   analysis: ml_collections.ConfigDict, rng: jax.Array) -> dict:
  """One report entry (deepalign.analysis.report schema) plus the extras above."""
  t = int(analysis.response_len)
  m = int(analysis.num_continuations)
  groups = int(analysis.grad_groups)
  b = int(analysis.martingale_responses)
  # b * (T+1) * M continuations in pieces of <= 16 * (T+1) * M rows: bounded memory.
  chunks = b // 16 if b % 16 == 0 else 1
  sampling = rollout.SamplingConfig(max_new_tokens=t, eos_id=env.eos_id, pad_id=env.pad_id)
  gen = GenerateContinueFn(model, sampling)
  harm, refused = PromptJudge(env.harm), PromptJudge(env.refused)
  logprob_fn = ModelLogprobFn(model)
  # keys[5], keys[6] drew the dropped sampled-recovery estimates; kept in the split so that
  # every other key, and so every reported number, stays what earlier reports used.
  keys = jax.random.split(rng, 9)
  n_grad = int(analysis.gradient_responses)
  vocab = int(env.vocab_size)
  ctx = jax.tree.map(jnp.asarray, probe.harmful)
  htok, hlen = jnp.asarray(probe.harmful_tokens), jnp.asarray(probe.harmful_len)
  depths = asr_depths(probe, analysis.asr_depths)

  # Every depth that leaves the model a token to write; asr_at_k keeps the configured ones.
  every = tuple(range(int(probe.harmful_len.min())))
  # Judged twice, for harm and for a refusal: the same responses.
  asr_all, ref = prefill_rates(gen, (harm, refused), params, ctx, htok, hlen, keys[0],
                               depths=every, num_samples=int(analysis.asr_samples))
  asr = {k: asr_all[k] for k in depths}
  benign = benign_eval(gen, refused, params, jax.tree.map(jnp.asarray, probe.benign), keys[1],
                       response_len=t, helpful_fn=PromptJudge(env.helpfulness),
                       num_samples=int(analysis.benign_samples))
  kl_tokens, kl_mask = _with_eos(probe, env.eos_id)
  kl = kl_profile_of_models(ModelLogitsFn(model), params, base_params, ctx,
                            jnp.asarray(kl_tokens), jnp.asarray(kl_mask))

  # The standard objective E[h] at this policy: its own responses, their martingale increments.
  ctx_b = jax.tree.map(lambda x: x[:b], ctx)
  own = rollout.generate(model, params, ctx_b['prompt_tokens'], ctx_b['prompt_mask'], keys[2],
                         config=sampling)
  est = estimate_harm_martingale(gen, harm, params, ctx_b, own.tokens, own.response_mask, keys[3],
                                 num_continuations=m, num_chunks=chunks)
  first = lambda x: x[:n_grad]
  sampled = per_position_grad_norms(logprob_fn, params, jax.tree.map(first, ctx_b),
                                    first(own.tokens), first(own.response_mask),
                                    first(est.D * own.generated_mask), num_groups=groups)
  grad = full_vocab_grad_norms(gen, harm, model, params, jax.tree.map(first, ctx_b),
                               first(own.tokens), first(own.response_mask),
                               first(own.generated_mask), keys[7], vocab, analysis)

  # The recovery objective L_rec: continue a harmful prefix of depth k ~ U{k_min..K}.
  depth = jnp.asarray(probe.recovery_depth)
  rec = rollout.generate(model, params, ctx_b['prompt_tokens'], ctx_b['prompt_mask'], keys[4],
                         config=sampling, forced_tokens=htok[:b], forced_len=depth)
  grad_rec = full_vocab_grad_norms(gen, harm, model, params, jax.tree.map(first, ctx_b),
                                   first(rec.tokens), first(rec.response_mask),
                                   first(rec.generated_mask), keys[8], vocab, analysis)
  rec_h = harm(ctx_b, rec.tokens, rec.response_mask)

  entry = entry_from_estimates(asr=asr, benign=benign, kl=kl, grad=grad, grad_recovery=grad_rec,
                               martingale=est)
  entry.update(to_jsonable({
      'asr_at_every_k': {str(k): v[0] for k, v in asr_all.items()},
      'asr_at_every_k_se': {str(k): v[1] for k, v in asr_all.items()},
      'refused_at_k': {str(k): v[0] for k, v in ref.items()},
      'refused_at_k_se': {str(k): v[1] for k, v in ref.items()},
      'harm_rate_sampled': mean_and_se(harm(ctx_b, own.tokens, own.response_mask)),
      'recovery_harm': mean_and_se(rec_h),
      'grad_norm_sq_unbiased': grad.norm_sq_unbiased,
      'grad_norm_recovery_sq_unbiased': grad_rec.norm_sq_unbiased,
      'grad_norm_sampled_per_position': sampled.norm,
      'grad_norm_sampled_sq_unbiased': sampled.norm_sq_unbiased,
      'recovery_max_depth': int(probe.recovery_depth.max()),
      'recovery_min_depth': int(probe.recovery_depth.min()),
      'harmful_answer_len': int(probe.harmful_len.min()),
  }))
  return entry
