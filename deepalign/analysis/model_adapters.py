"""Plug a Flax causal LM (deepalign.models) and a judge into the analysis estimators.

The estimators take small function interfaces so that the tabular policy (exact mode) and a
real model run the same code. Here are those functions for a `models.Transformer` with the
`rollout.generate` sampler; `context` is the prompt batch {'prompt_tokens': [B, P] LEFT-padded,
'prompt_mask': [B, P]}. All are frozen dataclasses, hence hashable static jit arguments.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class GenerateContinueFn:
  """continue_fn / generate_fn: rollout.generate with the first forced_len tokens forced.

  sampling_config: a rollout.SamplingConfig whose max_new_tokens equals the response length T
  the estimator works on. generate: the sampler (default deepalign.rollout.generate).
  """
  model: Any
  sampling_config: Any
  generate: Callable | None = None

  def __call__(self, params, context, forced_tokens: jax.Array, forced_len: jax.Array,
               rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    generate = self.generate
    if generate is None:
      from deepalign import rollout  # the sampler imports the model stack; load it on use
      generate = rollout.generate
    out = generate(self.model, params, context['prompt_tokens'], context['prompt_mask'], rng,
                   config=self.sampling_config, forced_tokens=forced_tokens,
                   forced_len=forced_len)
    return out.tokens, out.response_mask


def _response_logits(model, params, context, tokens: jax.Array,
                     response_mask: jax.Array) -> jax.Array:
  """Logits [B, T, V] predicting response token t from (prompt, y_<t), teacher-forced."""
  prompt_tokens, prompt_mask = context['prompt_tokens'], context['prompt_mask']
  full = jnp.concatenate([prompt_tokens, tokens.astype(prompt_tokens.dtype)], axis=1)
  mask = jnp.concatenate([prompt_mask, response_mask.astype(prompt_mask.dtype)], axis=1)
  logits = model.apply({'params': params}, full, mask)
  p, t = prompt_tokens.shape[1], tokens.shape[1]
  # Left-padded prompts end at column P-1, so column P-1+t predicts response token t.
  return logits[:, p - 1:p - 1 + t]


@dataclasses.dataclass(frozen=True)
class ModelLogitsFn:
  """logits_fn(params, context, tokens [B, T], response_mask) -> [B, T, V]."""
  model: Any

  def __call__(self, params, context, tokens, response_mask):
    return _response_logits(self.model, params, context, tokens, response_mask)


@dataclasses.dataclass(frozen=True)
class ModelLogprobFn:
  """logprob_fn(params, context, tokens [B, T], response_mask) -> [B, T] log pi(y_t | x, y_<t).

  Uses rollout.token_logprobs, the one log-prob function of every path, at `temperature`.
  """
  model: Any
  temperature: float = 1.0

  def __call__(self, params, context, tokens, response_mask):
    from deepalign import rollout
    logits = _response_logits(self.model, params, context, tokens, response_mask)
    return rollout.token_logprobs(logits, tokens, self.temperature) * response_mask


@dataclasses.dataclass(frozen=True)
class ModelNextTokenLogprobsFn:
  """logprob_fn(params, context, tokens [B, T], response_mask) -> [B, T, V] log pi(. | x, y_<t)
  at `temperature` (the full-vocabulary per-position gradient, analysis/next_token_harm.py)."""
  model: Any
  temperature: float = 1.0

  def __call__(self, params, context, tokens, response_mask):
    logits = _response_logits(self.model, params, context, tokens, response_mask)
    return jax.nn.log_softmax(logits.astype(jnp.float32) / self.temperature, axis=-1)


@dataclasses.dataclass(frozen=True)
class PromptJudge:
  """judge_fn(context, tokens, mask) from a judge of (prompt_ids, response_ids, mask), such as
  the harm language's `env.harm`, `env.refused` or `env.helpfulness`."""
  fn: Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

  def __call__(self, context, tokens, response_mask):
    return self.fn(context['prompt_tokens'], tokens, response_mask)
