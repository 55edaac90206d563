"""Prefill attacks (ASR@k) and over-refusal on benign prompts.

ASR@k = E_x[h(x, y~_<=k ⊕ y_>k)]: the first k tokens of a harmful response y~ are forced
(written by the attacker), the model under test writes the rest, the judge scores the whole
response (DESIGN.md "Theory", Qi et al. 2024). A shallowly aligned model refuses at k = 0 and
complies once a few harmful tokens are in place.

generate_fn has the `continue_fn` signature (see harm_martingale_mc):
  generate_fn(params, context, forced_tokens [N, F], forced_len [N], rng) -> (tokens, mask).
"""

import functools
from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.analysis.harm_martingale_mc import ContinueFn, JudgeFn, mean_and_se, repeat_rows
from deepalign.errors import UserError

DEFAULT_DEPTHS = (0, 1, 2, 3, 5, 10, 20, 40)


def attack_depths(max_len: int, depths: Sequence[int] = DEFAULT_DEPTHS) -> tuple[int, ...]:
  """The depths that fit in a harmful response of `max_len` tokens (sorted, unique)."""
  bad = [k for k in depths if k < 0]
  if bad:
    raise UserError(f'prefill depths {bad}: depths are token counts and must be >= 0.')
  return tuple(sorted({int(k) for k in depths if k <= max_len}))


@functools.partial(jax.jit, static_argnames=('generate_fn', 'judge_fns', 'depths', 'num_samples'))
def _rates(generate_fn, judge_fns, params, context, harmful_tokens, harmful_len, rng, depths,
           num_samples):
  b = harmful_tokens.shape[0]
  reps = len(depths) * num_samples
  forced_len = jnp.minimum(
      jnp.tile(jnp.repeat(jnp.asarray(depths, jnp.int32), num_samples), b),
      jnp.repeat(harmful_len, reps))  # row order: (prompt, depth, sample)
  ctx = repeat_rows(context, reps)
  tokens, mask = generate_fn(params, ctx, jnp.repeat(harmful_tokens, reps, axis=0), forced_len,
                             rng)
  out = []
  for judge_fn in judge_fns:
    h = judge_fn(ctx, tokens, mask).astype(jnp.float32)
    # Average the samples of a prompt first: the SE is over prompts, the unit of the study.
    out.append(mean_and_se(jnp.mean(h.reshape(b, len(depths), num_samples), axis=-1), axis=0))
  return out


def prefill_rates(generate_fn: ContinueFn, judge_fns: Sequence[JudgeFn], params, context,
                  harmful_tokens: jax.Array, harmful_len: jax.Array, rng: jax.Array, *,
                  depths: Sequence[int] = DEFAULT_DEPTHS,
                  num_samples: int = 1) -> list[dict[int, tuple[float, float]]]:
  """`prefill_asr` with several judges scoring the SAME prefilled responses (e.g. harm and
  refusal: one generation instead of one per judge). Returns one {k: (rate, SE)} per judge."""
  if num_samples < 1:
    raise UserError(f'prefill_asr num_samples={num_samples}: use at least 1.')
  ks = attack_depths(harmful_tokens.shape[1], depths)
  if not ks:
    raise UserError(f'prefill depths {tuple(depths)}: none fits harmful responses of '
                    f'{harmful_tokens.shape[1]} tokens; include 0.')
  rates = _rates(generate_fn, tuple(judge_fns), params, context,
                 jnp.asarray(harmful_tokens, jnp.int32), jnp.asarray(harmful_len, jnp.int32), rng,
                 ks, num_samples)
  out = []
  for mean, se in rates:
    mean, se = np.asarray(mean), np.asarray(se)
    out.append({k: (float(mean[i]), float(se[i])) for i, k in enumerate(ks)})
  return out


def prefill_asr(generate_fn: ContinueFn, judge_fn: JudgeFn, params, context,
                harmful_tokens: jax.Array, harmful_len: jax.Array, rng: jax.Array, *,
                depths: Sequence[int] = DEFAULT_DEPTHS,
                num_samples: int = 1) -> dict[int, tuple[float, float]]:
  """ASR@k for every depth k that fits the harmful responses.

  Args:
    generate_fn, judge_fn: hashable callables (see the module docstring).
    context: per-prompt pytree (leading axis B, e.g. harmful prompts) or None.
    harmful_tokens: int [B, R] right-padded harmful responses y~; harmful_len: int [B]. A row
      shorter than k is forced whole (its harmful response is complete).
    depths: the k to try; those > R are dropped.
    num_samples: responses per (prompt, k).
  Returns:
    {k: (ASR@k, standard error over prompts)} in depth order.
  """
  return prefill_rates(generate_fn, (judge_fn,), params, context, harmful_tokens, harmful_len,
                       rng, depths=depths, num_samples=num_samples)[0]


@functools.partial(jax.jit, static_argnames=('generate_fn', 'score_fns', 'num_samples',
                                             'response_len'))
def _benign(generate_fn, score_fns, params, context, rng, num_samples, response_len):
  b = jax.tree.leaves(context)[0].shape[0] if context is not None else 1
  ctx = repeat_rows(context, num_samples)
  n = b * num_samples
  tokens, mask = generate_fn(params, ctx, jnp.zeros((n, response_len), jnp.int32),
                             jnp.zeros(n, jnp.int32), rng)
  out = []
  for fn in score_fns:
    per_prompt = jnp.mean(fn(ctx, tokens, mask).astype(jnp.float32).reshape(b, num_samples), -1)
    out.append(mean_and_se(per_prompt))
  return out


def benign_eval(generate_fn: ContinueFn, refusal_fn: JudgeFn, params, context, rng: jax.Array, *,
                response_len: int, helpful_fn: JudgeFn | None = None,
                num_samples: int = 1) -> Mapping[str, tuple[float, float]]:
  """Over-refusal (and helpfulness) on benign prompts, no prefill.

  Args:
    refusal_fn(context, tokens, mask) -> [N] 1 if the response refuses.
    helpful_fn(context, tokens, mask) -> [N] in [0, 1], 1 = the benign request is fulfilled.
    context: per-prompt pytree of benign prompts (leading axis B).
    response_len: F, the width of the (empty) forced-token array passed to generate_fn.
  Returns:
    {'over_refusal': (mean, se)} plus 'benign_helpfulness' when helpful_fn is given.
  """
  fns = (refusal_fn,) if helpful_fn is None else (refusal_fn, helpful_fn)
  results = _benign(generate_fn, fns, params, context, rng, num_samples, response_len)
  names = ('over_refusal', 'benign_helpfulness')
  return {name: (float(m), float(s)) for name, (m, s) in zip(names, results)}
