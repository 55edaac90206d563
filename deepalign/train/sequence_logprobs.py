"""Log-probs of the tokens of fixed-shape rows under a causal LM (SFT, DPO, reference)."""

from typing import Any, Mapping

import jax

from deepalign import models
from deepalign.models.lm_head import head_kernel
from deepalign.rollout.chunked_logprobs import token_stats


def target_logprobs(model: models.Transformer, params: Any, batch: Mapping[str, jax.Array],
                    prefix: str = '', chunk_size: int = 0) -> tuple[jax.Array, jax.Array]:
  """(log pi(token_t | tokens_<t) [B, T-1], loss mask [B, T-1]) for t = 1..T-1.

  Reads `{prefix}tokens`, `{prefix}positions`, `{prefix}loss_mask` and `{prefix}segment_ids`
  (else `{prefix}attention_mask`) ([B, T] each); the hidden state at t-1 predicts the token at
  t. With segment ids, packed examples attend only within themselves (their positions
  restart). The LM head runs over `chunk_size` positions at a time
  (`rollout.chunked_logprobs`: never a [B, T, V] float32 buffer); 0 or >= T - 1 = one chunk.
  """
  tokens = batch[f'{prefix}tokens']
  mask = batch.get(f'{prefix}segment_ids', batch[f'{prefix}attention_mask'])
  hidden = model.apply({'params': params}, tokens, mask, batch[f'{prefix}positions'],
                       method=models.Transformer.hidden_states)
  logprobs, _ = token_stats(hidden[:, :-1], head_kernel(params, model.config), tokens[:, 1:],
                            model.config, chunk_size=chunk_size)
  return logprobs, batch[f'{prefix}loss_mask'][:, 1:].astype(jax.numpy.float32)


def logits_chunk_size(config: Any) -> int:
  """`config.model.logits_chunk_size` (0 = one chunk) of a stage's ConfigDict."""
  return int(config.model.get('logits_chunk_size', 0))
