"""Harm judges for the RL steps: the exact judge of the synthetic language, or a classifier.

A judge is a hashable callable
`judge(judge_params, prompt [E, P], prompt_mask, response [E, N], response_mask) -> {'harm': [E], ...}`
with h in [0, 1]; extra outputs ('helpful', 'refused') are averaged into the step's metrics.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from deepalign.envs.harm_language import HarmLanguage
from deepalign.models.transformer import Transformer

PyTree = Any


@dataclasses.dataclass(frozen=True)
class EnvJudge:
  """The exact judge of the synthetic harm language (no params: pass `{}`)."""
  env: HarmLanguage

  def __call__(self, params: PyTree, prompt: jax.Array, prompt_mask: jax.Array,
               response: jax.Array, response_mask: jax.Array) -> dict[str, jax.Array]:
    del params, prompt_mask  # left padding is pad tokens, which match no topic word
    return {'harm': self.env.harm(prompt, response, response_mask),
            'helpful': self.env.helpfulness(prompt, response, response_mask),
            'refused': self.env.refused(prompt, response, response_mask)}


@dataclasses.dataclass(frozen=True)
class ClassifierJudge:
  """A `head='score'` Transformer (e.g. a Llama-Guard-style classifier exported as
  *ForSequenceClassification with one label): h = sigmoid(score / temperature) on
  prompt ⊕ response."""
  model: Transformer
  temperature: float = 1.0

  def __call__(self, params: PyTree, prompt: jax.Array, prompt_mask: jax.Array,
               response: jax.Array, response_mask: jax.Array) -> dict[str, jax.Array]:
    tokens = jnp.concatenate([prompt, response], axis=1)
    mask = jnp.concatenate([prompt_mask, response_mask], axis=1).astype(jnp.int32)
    score = self.model.apply({'params': params}, tokens, mask).astype(jnp.float32)
    return {'harm': jax.nn.sigmoid(score / self.temperature)}
