"""Log-probs of the tokens of fixed-shape rows under a causal LM (SFT, DPO, reference)."""

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from deepalign import models, objectives
from deepalign.models import shared_prefix
from deepalign.models.lm_head import head_kernel
from deepalign.rollout.chunked_logprobs import token_stats
from deepalign.train import pair_rows


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
  # The last position predicts no target: the last layer skips it (`read`).
  hidden = model.apply({'params': params}, tokens, mask, batch[f'{prefix}positions'],
                       read=slice(0, tokens.shape[1] - 1), method=models.Transformer.hidden_states)
  logprobs, _ = token_stats(hidden, head_kernel(params, model.config), tokens[:, 1:],
                            model.config, chunk_size=chunk_size)
  return logprobs, batch[f'{prefix}loss_mask'][:, 1:].astype(jax.numpy.float32)


def shared_target_logprobs(model: models.Transformer, params: Any, batch: Mapping[str, jax.Array],
                           prefix_len: int, groups: np.ndarray, chunk_size: int = 0
                           ) -> tuple[jax.Array, jax.Array]:
  """`target_logprobs` of tokens prefix_len..T-1 only ([B, T - prefix_len] each), for rows whose
  first `prefix_len` columns agree within each group of `groups` and carry no loss target:
  the shared columns run once per group (`models.shared_prefix`) and the last layer's queries,
  MLP and the LM head only where a target can be."""
  tokens = batch['tokens']
  mask = batch.get('segment_ids', batch['attention_mask'])
  # Only positions that predict a target run the last layer's queries and MLP (`read`).
  hidden = shared_prefix.hidden_states(model, params, tokens, mask, batch['positions'],
                                       prefix_len, groups, read=slice(prefix_len - 1, -1))
  logprobs, _ = token_stats(hidden, head_kernel(params, model.config),
                            tokens[:, prefix_len:], model.config, chunk_size=chunk_size)
  return logprobs, batch['loss_mask'][:, prefix_len:].astype(jnp.float32)


def pair_sequence_logprobs(model: models.Transformer, params: Any, batch: Mapping[str, jax.Array],
                           average: bool = False, chunk_size: int = 0
                           ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(chosen [B], rejected [B] summed (or, `average`, mean) log-probs of the response tokens,
  mean NLL of the chosen tokens) of a preference batch (DPO, its reference, RPO's term).

  A batch whose `shared_prefix` entry has width S > 0 (`pair_rows.mark_shared_prefix`: every
  pair agrees on its first S columns) runs them once per pair (`shared_target_logprobs`); any
  other batch runs both rows in full. The numbers agree to float32 rounding.
  """
  rows = pair_rows.stack(batch)
  shared = pair_rows.shared_prefix_width(batch)
  if shared:
    groups = pair_rows.groups(rows['tokens'].shape[0] // 2)
    lp, mask = shared_target_logprobs(model, params, rows, shared, groups, chunk_size)
  else:
    lp, mask = target_logprobs(model, params, rows, chunk_size=chunk_size)
  chosen, rejected = pair_rows.split(objectives.sequence_logprobs(lp, mask, average))
  nll = objectives.nll_loss(pair_rows.split(lp)[0], pair_rows.split(mask)[0])
  return chosen, rejected, nll


def logits_chunk_size(config: Any) -> int:
  """`config.model.logits_chunk_size` (0 = one chunk) of a stage's ConfigDict."""
  return int(config.model.get('logits_chunk_size', 0))
