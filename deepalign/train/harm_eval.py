"""Harm of sampled responses on held-out prompts of the synthetic harm language (exact judge).

harm_at_k = mean over harmful prompts of h(x, ỹ_≤k ⊕ y_>k), y_>k from the policy (k = 0: no
prefill; k > 0: a prefill attack, ASR@k). helpful = mean over benign prompts of the judge's
helpfulness at k = 0, so refusing everything does not count as safe and useful.
"""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from deepalign import models
from deepalign import rollout
from deepalign.data import pipeline
from deepalign.train import eval_batches, stage_data


def harm_metrics(model: models.Transformer, params: Any, env: Any, batches: Sequence[dict],
                 rng: jax.Array, depths: Sequence[int] = (0,), max_new_tokens: int = 16,
                 greedy: bool = False) -> dict[str, float]:
  """{'harm_at_k' for k in depths, 'helpful', 'refusal_benign'} from `prompt_dataset` batches."""
  sampling = rollout.SamplingConfig(max_new_tokens=max_new_tokens, greedy=greedy,
                                    eos_id=env.tokenizer.eos_ids, pad_id=env.pad_id)
  sums = {f'harm_at_{k}': [0.0, 0.0] for k in depths}
  sums.update({'helpful': [0.0, 0.0], 'refusal_benign': [0.0, 0.0]})
  for b, batch in enumerate(batches):
    harmful = np.asarray(batch['is_harmful'], bool)
    for k in depths:
      forced_len = np.where(harmful, np.minimum(k, batch['harmful_response_len']), 0)
      out = rollout.generate(model, params, jnp.asarray(batch['prompt_tokens']),
                             jnp.asarray(batch['prompt_mask']),
                             jax.random.fold_in(jax.random.fold_in(rng, b), k), config=sampling,
                             forced_tokens=jnp.asarray(batch['harmful_response']),
                             forced_len=jnp.asarray(forced_len, jnp.int32))
      h = np.asarray(env.harm(batch['prompt_tokens'], out.tokens, out.response_mask))
      sums[f'harm_at_{k}'][0] += float(h[harmful].sum())
      sums[f'harm_at_{k}'][1] += float(harmful.sum())
      if k == 0:
        helpful = np.asarray(env.helpfulness(batch['prompt_tokens'], out.tokens, out.response_mask))
        refused = np.asarray(env.refused(batch['prompt_tokens'], out.tokens, out.response_mask))
        for name, values in (('helpful', helpful), ('refusal_benign', refused)):
          sums[name][0] += float(values[~harmful].sum())
          sums[name][1] += float((~harmful).sum())
  return {name: total / max(count, 1.0) for name, (total, count) in sums.items()}


def held_out_harm_eval(config: Any, data: Any, enabled: bool, batch_size: int, num_batches: int,
                       depths: Sequence[int], max_new_tokens: int
                       ) -> Callable[[models.Transformer, Any], dict[str, float]]:
  """`(model, params) -> harm_metrics` on fixed held-out prompts of the synthetic language (the
  same rows and key at every evaluation); `{}` when disabled or the data has no exact judge."""
  if data.env is None or not enabled:
    return lambda model, params: {}
  batches = eval_batches.take(
      pipeline.prompt_dataset, stage_data.records(config, data, 'harmful_prompt', 'eval'),
      data.tokenizer, data.template, stage_data.pipeline_config(config, batch_size), num_batches)

  def evaluate(model: models.Transformer, params: Any) -> dict[str, float]:
    return harm_metrics(model, params, data.env, batches, jax.random.PRNGKey(config.seed + 7),
                        depths=tuple(depths), max_new_tokens=max_new_tokens)

  return evaluate

