"""`generate`: prefill the left-padded prompts once, then the whole decode loop inside one jit."""

import functools
from typing import Any

import jax
import jax.numpy as jnp

from deepalign.errors import UserError
from deepalign.models import fused_projections
from deepalign.models.kv_cache import init_cache
from deepalign.models.rope import rope_tables
from deepalign.models.sharding import single_device
from deepalign.models.transformer import Transformer
from deepalign.rollout.categorical import argmax_last, sample_categorical
from deepalign.rollout.logprobs import sampling_logits, token_entropy, token_logprobs
from deepalign.rollout.sample_output import SampleOutput
from deepalign.rollout.sampling_config import SamplingConfig


def _forced_columns(forced_tokens: jax.Array | None, forced_len: jax.Array | None, batch: int,
                    n: int) -> tuple[jax.Array, jax.Array]:
  """forced tokens padded/cut to [B, N] and forced lengths [B] clipped to 0..min(F, N)."""
  if forced_tokens is None:
    return jnp.zeros((batch, n), jnp.int32), jnp.zeros((batch,), jnp.int32)
  forced_tokens = jnp.asarray(forced_tokens, jnp.int32)
  if forced_tokens.ndim != 2 or forced_tokens.shape[0] != batch:
    raise UserError(f'generate: forced_tokens has shape {forced_tokens.shape}; expected '
                    f'[{batch}, F] (one row per prompt).')
  f = forced_tokens.shape[1]
  if forced_len is None:
    forced_len = jnp.full((batch,), f, jnp.int32)
  forced_len = jnp.clip(jnp.asarray(forced_len, jnp.int32), 0, min(f, n))
  forced = forced_tokens[:, :n] if f >= n else jnp.pad(forced_tokens, ((0, 0), (0, n - f)))
  return forced, forced_len


def decode_phases(prompt_len: int, n: int) -> list[tuple[int, int]]:
  """[(t_end, cache slots)]: the decode loop in up to 4 phases of steps t < t_end, each with a
  KV cache just long enough for its last step (slots 0..P + t_end - 2).

  A decode step reads every slot of the cache it is given, valid or not, and at 16-row batches
  it is bound by memory traffic (the weights and the cache), so an early step over a short
  cache is a cheaper step. One phase per 16 tokens, at most 4 (each is a loop body of its own to
  compile); the last phase has the full P + N - 1 slots.
  """
  phases = min(max(n // 16, 1), 4)
  ends = sorted({1 + round((n - 1) * j / phases) for j in range(1, phases + 1)} | {n})
  return [(t_end, prompt_len + max(t_end - 1, 0)) for t_end in ends if t_end > 1 or n == 1]


@functools.partial(jax.jit, static_argnames=('model', 'config', 'group_size'))
def generate(model: Transformer, params: Any, prompt_tokens: jax.Array, prompt_mask: jax.Array,
             rng: jax.Array, config: SamplingConfig = SamplingConfig(),
             forced_tokens: jax.Array | None = None,
             forced_len: jax.Array | None = None, group_size: int = 1) -> SampleOutput:
  """Samples `config.max_new_tokens` response tokens for each LEFT-padded prompt.

  prompt_tokens/prompt_mask [B, P]; forced_tokens [B, F], forced_len [B]: the first
  forced_len[i] response tokens of row i are teacher-forced (prefill attacks, recovery
  rollouts), the rest sampled. One prefill pass fills the KV cache, then a `lax.while_loop`
  decodes (leaving early once every row has ended, when `stop_at_eos`). Token t of the
  response is sampled with key fold_in(rng, t), so the same rng gives the same tokens.
  group_size G: the rows come in contiguous groups of G identical prompts (GRPO's G samples of
  a prompt; the caller's promise): the prefill runs on one row per group and its cache is
  copied to the others.
  """
  cfg = model.config
  if cfg.head != 'lm':
    raise UserError(f'generate: the model has head={cfg.head!r}; sampling needs head=\'lm\'.')
  batch, prompt_len = prompt_tokens.shape
  n = config.max_new_tokens
  prompt_mask = prompt_mask.astype(jnp.int32)
  forced, forced_len = _forced_columns(forced_tokens, forced_len, batch, n)
  # The prefill multiplies many rows per kernel: the model's own kernels, no fused copies.
  prefill_variables = variables = {'params': params}
  if config.fuse_projections and single_device():
    # Once per call, outside the loop; on a mesh the concatenation would reshard the kernels.
    variables = {'params': fused_projections.fuse(params)}

  if group_size < 1 or batch % group_size:
    raise UserError(f'generate: group_size={group_size} must be >= 1 and divide the '
                    f'{batch} prompt rows.')
  # The last response token is never fed back, so N - 1 slots after the prompt suffice; the
  # decode phases grow the cache to that as they go.
  phases = decode_phases(prompt_len, n)
  cache = init_cache(cfg, batch // group_size, phases[0][1])
  # Only the last prompt position's state is read: the last layer's queries and MLP run there.
  hidden, cache = model.apply(prefill_variables, prompt_tokens[::group_size],
                              prompt_mask[::group_size],
                              cache=cache, read=slice(prompt_len - 1, prompt_len),
                              method=Transformer.hidden_states)
  if group_size > 1:
    rows = jnp.repeat(jnp.arange(batch // group_size), group_size)
    hidden, cache = hidden[rows], cache.take_rows(rows)
  first_logits = model.apply(variables, hidden[:, -1], method=Transformer.logits)
  first_position = jnp.sum(prompt_mask, axis=1)  # [B] position of response token 0
  # Step t feeds token t - 1 at position first_position + t - 1: every step's rope tables at
  # once, before the loop (inside it XLA:CPU evaluates cos / sin per element of q and k).
  step_rope = None
  if cfg.position_embedding == 'rope':
    step_rope = rope_tables(cfg, first_position[:, None] - 1 + jnp.arange(n, dtype=jnp.int32))

  def choose(logits: jax.Array, t: jax.Array, done: jax.Array):
    """Token t of every row from next-token logits [B, V]."""
    if config.greedy:
      sampled = argmax_last(logits.astype(jnp.float32) / jnp.float32(config.temperature))
    else:
      z = sampling_logits(logits, config.temperature, config.top_k, config.top_p)
      sampled = sample_categorical(jax.random.fold_in(rng, t), z)
    is_forced = t < forced_len
    token = jnp.where(is_forced, jax.lax.dynamic_index_in_dim(forced, t, 1, False),
                      sampled).astype(jnp.int32)
    exists = ~done
    # The policy is the distribution sampled from: the filtered one when top_k / top_p are on.
    filters = config.filters
    logprob = jnp.where(exists, token_logprobs(logits, token, config.temperature, **filters,
                                               gather=True), 0.0)
    # [B, V] per step is cheap next to the step's matmuls, and spares an RL step the policy
    # forward it would otherwise need only to report the entropy.
    entropy = jnp.where(exists, token_entropy(logits, config.temperature, **filters), 0.0)
    token = jnp.where(exists, token, config.pad_id)
    if config.stop_at_eos:
      done = done | (exists & config.is_eos(token))
    return token, logprob, entropy, exists, is_forced & exists, done

  def write(buffers, t, columns):
    return tuple(jax.lax.dynamic_update_index_in_dim(b, c.astype(b.dtype), t, 1)
                 for b, c in zip(buffers, columns))

  buffers = (jnp.full((batch, n), config.pad_id, jnp.int32), jnp.zeros((batch, n), jnp.float32),
             jnp.zeros((batch, n), jnp.float32), jnp.zeros((batch, n), jnp.int32),
             jnp.zeros((batch, n), jnp.int32))
  token, logprob, entropy, exists, was_forced, done = choose(first_logits, jnp.int32(0),
                                                             jnp.zeros((batch,), bool))
  buffers = write(buffers, 0, (token, logprob, entropy, exists, was_forced))

  def cond(state, t_end):
    t, _, _, _, done, _ = state
    keep_going = t < t_end
    if config.stop_at_eos:
      keep_going &= ~jnp.all(done)
    return keep_going

  def body(state):
    t, token, exists, cache, done, buffers = state
    positions = (first_position + t - 1)[:, None]
    rope = None if step_rope is None else tuple(
        jax.lax.dynamic_slice_in_dim(table, t, 1, axis=1) for table in step_rope)
    hidden, cache = model.apply(variables, token[:, None], exists[:, None].astype(jnp.int32),
                                positions=positions, cache=cache, rope=rope,
                                method=Transformer.hidden_states)
    logits = model.apply(variables, hidden[:, 0], method=Transformer.logits)
    token, logprob, entropy, exists, was_forced, done = choose(logits, t, done)
    buffers = write(buffers, t, (token, logprob, entropy, exists, was_forced))
    return t + 1, token, exists, cache, done, buffers

  state = (jnp.int32(1), token, exists, cache, done, buffers)
  for t_end, slots in phases:
    t, token, exists, cache, done, buffers = state
    state = (t, token, exists, cache.grown(slots), done, buffers)
    state = jax.lax.while_loop(functools.partial(cond, t_end=t_end), body, state)
  *_, buffers = state
  tokens, logprobs, entropy, response_mask, forced_mask = buffers
  lengths = jnp.sum(response_mask, axis=1)
  last = jnp.take_along_axis(tokens, jnp.maximum(lengths - 1, 0)[:, None], axis=1)[:, 0]
  return SampleOutput(tokens=tokens, logprobs=logprobs, response_mask=response_mask,
                      generated_mask=response_mask - forced_mask, lengths=lengths,
                      ended_with_eos=(lengths > 0) & config.is_eos(last), entropy=entropy)
