"""Episodes for the fused RL steps: sampling (ordinary + recovery rollouts) and scoring.

PPO and GRPO share this file; only their advantage estimates and losses differ.

An RL batch (CONTRACTS "Batches", prompts) holds the ordinary prompts, and optionally a
recovery sub-batch of harmful prompts with a harmful response each:

  prompt_tokens [B, P] (left-padded), prompt_mask [B, P], is_harmful [B]
  recovery_prompt_tokens [Br, P'], recovery_prompt_mask [Br, P'],
  recovery_harmful_response [Br, R], recovery_harmful_response_len [Br]

Every prompt is sampled `group_size` times (GRPO's G; 1 for PPO). A recovery rollout forces
the first k tokens of the harmful response (k ~ the configured depth distribution, capped by
the response's length) and lets the policy continue: the forced tokens are context only
(`generated_mask` is 0 on them), so no policy loss ever touches them. Ordinary rows come
first, recovery rows after them, so slicing them apart is static.
"""

import dataclasses
from typing import Any, Callable, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from deepalign.models import read_positions, shared_prefix
from deepalign.models.sharding import single_device
from deepalign.models.lm_head import head_kernel
from deepalign.models.transformer import Transformer, last_token_positions
from deepalign.objectives import recovery as recovery_lib
from deepalign.objectives import token_rewards
from deepalign.rollout import chunked_logprobs
from deepalign.rollout.generate import generate
from deepalign.rollout.sampling_config import SamplingConfig

PyTree = Any
# judge_fn(judge_params, prompt_tokens, prompt_mask, response_tokens, response_mask)
#   -> {'harm': [E] in [0, 1], optional extras such as 'helpful': [E]}
JudgeFn = Callable[[PyTree, jax.Array, jax.Array, jax.Array, jax.Array], Mapping[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class RolloutSpec:
  """How episodes are sampled and scored (hashable: it is closed over by a jitted step).

  sampling: the sampler (max_new_tokens N covers the forced prefix of recovery rollouts).
  group_size: samples per prompt (GRPO's G; PPO uses 1).
  recovery_coef: lambda_rec; the reward of a recovery rollout is -lambda_rec * h. 0 turns
    recovery rollouts off even when the batch carries them.
  depth_distribution, max_depth, depth_p, depths, min_depth:
    `objectives.recovery.sample_prefill_depth`.
  missing_eos_penalty: subtracted from the score of a response that never emitted EOS
    (TRL's `missing_eos_penalty`); None = off.
  logprobs_from_sampler: take the old (behaviour) log-probs and entropies from the sampler
    instead of a policy forward over the sampled sequences (W_TINY.md allows both). Same
    policy, same temperature, so they agree to float rounding (KV-cache vs full-sequence
    matmuls); saves one policy forward per step. The forward still runs when a value head on
    the policy's trunk needs its hidden states.
  """
  sampling: SamplingConfig
  group_size: int = 1
  recovery_coef: float = 0.0
  depth_distribution: str = 'uniform'
  max_depth: int = 8
  depth_p: float = 0.3
  depths: tuple[int, ...] | None = None
  min_depth: int = 0
  missing_eos_penalty: float | None = None
  logprobs_from_sampler: bool = False
  logits_chunk_size: int = 0
  judge_ordinary: bool = True


@flax.struct.dataclass
class Episodes:
  """E = (B + Br) * G rollouts, ordinary ones first.

  prompt_tokens [E, P] left-padded, prompt_mask [E, P]; response tokens/masks [E, N] as in
  `rollout.SampleOutput`; sampler_logprobs, sampler_entropy [E, N]; is_recovery / is_harmful [E] bool;
  depth [E] int32 forced tokens (0 on ordinary rows).
  """
  prompt_tokens: jax.Array
  prompt_mask: jax.Array
  tokens: jax.Array
  response_mask: jax.Array
  generated_mask: jax.Array
  sampler_logprobs: jax.Array
  sampler_entropy: jax.Array
  ended_with_eos: jax.Array
  is_recovery: jax.Array
  is_harmful: jax.Array
  depth: jax.Array

  @property
  def sequence(self) -> tuple[jax.Array, jax.Array]:
    """prompt ⊕ response tokens [E, P + N] and their attention mask."""
    return (jnp.concatenate([self.prompt_tokens, self.tokens], axis=1),
            jnp.concatenate([self.prompt_mask, self.response_mask], axis=1).astype(jnp.int32))


def left_pad(tokens: jax.Array, mask: jax.Array, width: int, pad_id: int
             ) -> tuple[jax.Array, jax.Array]:
  """Left-pads [B, P] prompts to [B, width] (width >= P)."""
  extra = width - tokens.shape[1]
  return (jnp.pad(tokens, ((0, 0), (extra, 0)), constant_values=pad_id),
          jnp.pad(mask, ((0, 0), (extra, 0))))


def sample_episodes(policy: Transformer, params: PyTree, batch: Mapping[str, jax.Array],
                    rng: jax.Array, spec: RolloutSpec) -> Episodes:
  """Ordinary rollouts for every prompt, then recovery rollouts (traceable, inside jit)."""
  g = spec.group_size
  with_recovery = spec.recovery_coef > 0 and 'recovery_prompt_tokens' in batch
  width = batch['prompt_tokens'].shape[1]
  if with_recovery:
    width = max(width, batch['recovery_prompt_tokens'].shape[1])
  pad = spec.sampling.pad_id
  prompts, mask = left_pad(batch['prompt_tokens'], batch['prompt_mask'], width, pad)
  prompts, mask = jnp.repeat(prompts, g, axis=0), jnp.repeat(mask, g, axis=0)
  harmful = jnp.repeat(batch['is_harmful'].astype(bool), g, axis=0)
  rng_sample, rng_depth = jax.random.split(rng)
  n = spec.sampling.max_new_tokens
  # Rows come in groups of g copies of a prompt: generate's prefill runs once per group.
  prefill_group = shared_group_size(g)
  if not with_recovery:
    out = generate(policy, params, prompts, mask, rng_sample, spec.sampling,
                   group_size=prefill_group)
    zeros = jnp.zeros(harmful.shape, jnp.int32)
    return _episodes(prompts, mask, out, jnp.zeros_like(harmful), harmful, zeros)
  rec_prompts, rec_mask = left_pad(batch['recovery_prompt_tokens'],
                                   batch['recovery_prompt_mask'], width, pad)
  rec_prompts, rec_mask = jnp.repeat(rec_prompts, g, axis=0), jnp.repeat(rec_mask, g, axis=0)
  harmful_response = jnp.repeat(batch['recovery_harmful_response'], g, axis=0)
  # Leave at least one token for the policy: a fully forced response has nothing to learn.
  harmful_len = jnp.minimum(batch['recovery_harmful_response_len'], n - 1)
  # One depth per prompt, shared by its G rollouts: a GRPO group's baseline compares
  # continuations of the same start state (drawn after the repeat, a group mixed depths).
  depth = jnp.repeat(recovery_lib.sample_prefill_depth(
      rng_depth, harmful_len, spec.depth_distribution, spec.max_depth, spec.depth_p,
      spec.depths, spec.min_depth), g, axis=0)
  # ONE decode loop for ordinary and recovery rows (forced length 0 on ordinary rows): one KV
  # cache and one pass over the weights per token instead of two serial loops.
  b = prompts.shape[0]
  forced = jnp.concatenate([jnp.zeros((b, harmful_response.shape[1]), jnp.int32),
                            harmful_response.astype(jnp.int32)], axis=0)
  out = generate(policy, params, jnp.concatenate([prompts, rec_prompts]),
                 jnp.concatenate([mask, rec_mask]), rng_sample, spec.sampling,
                 forced_tokens=forced,
                 forced_len=jnp.concatenate([jnp.zeros((b,), jnp.int32), depth]),
                 group_size=prefill_group)
  is_rec = jnp.arange(b + rec_prompts.shape[0]) >= b
  return _episodes(jnp.concatenate([prompts, rec_prompts]), jnp.concatenate([mask, rec_mask]),
                   out, is_rec, jnp.concatenate([harmful, is_rec[b:]]),
                   jnp.concatenate([jnp.zeros((b,), jnp.int32), depth]))


def _episodes(prompts: jax.Array, mask: jax.Array, out: Any, is_recovery: jax.Array,
              is_harmful: jax.Array, depth: jax.Array) -> Episodes:
  return Episodes(prompt_tokens=prompts, prompt_mask=mask.astype(jnp.int32), tokens=out.tokens,
                  response_mask=out.response_mask, generated_mask=out.generated_mask,
                  sampler_logprobs=out.logprobs, sampler_entropy=out.entropy,
                  ended_with_eos=out.ended_with_eos, is_recovery=is_recovery,
                  is_harmful=is_harmful, depth=depth)


def num_ordinary(batch: Mapping[str, jax.Array], spec: RolloutSpec) -> int:
  """Number of ordinary rows at the front of the episodes (static)."""
  return batch['prompt_tokens'].shape[0] * spec.group_size


@flax.struct.dataclass
class Scores:
  """Sequence-level outcomes [E]: `score` is the RL reward (reward model on ordinary rows,
  -lambda_rec * h on recovery rows, minus the missing-EOS penalty); `judged` holds the
  judge's outputs ('harm', ...) on rows `judged_from`.. (0: every row, for metrics; the number
  of ordinary rows when `RolloutSpec.judge_ordinary` is False: recovery rows only)."""
  score: jax.Array
  reward_model: jax.Array
  judged: dict
  judged_from: int = flax.struct.field(pytree_node=False, default=0)


def score_episodes(reward_model: Transformer, reward_params: PyTree, judge_fn: JudgeFn,
                   judge_params: PyTree, episodes: Episodes, n_ordinary: int,
                   spec: RolloutSpec) -> Scores:
  """Reward model on ordinary rows, harm judge on recovery rows (and on ordinary rows, for
  metrics, when `spec.judge_ordinary`): each model runs only on the rows it scores."""
  seq, seq_mask = episodes.sequence
  seq, seq_mask = seq[:n_ordinary], seq_mask[:n_ordinary]
  # The score head reads the last real token of each row (the last layer runs only there);
  # the groups' prompts run once.
  last = last_token_positions(seq_mask)[:, None]
  hidden = sequence_hidden(reward_model, reward_params, seq, seq_mask,
                           episodes.prompt_tokens.shape[1], spec.group_size, read=last)
  rm = reward_model.apply({'params': reward_params}, hidden,
                          method=Transformer.head_outputs).astype(jnp.float32)
  n_rows = episodes.tokens.shape[0]
  start = 0 if spec.judge_ordinary else n_ordinary
  judged = {}
  if start < n_rows:
    judged = dict(judge_fn(judge_params, episodes.prompt_tokens[start:],
                           episodes.prompt_mask[start:], episodes.tokens[start:],
                           episodes.response_mask[start:]))
  score = rm
  if n_rows > n_ordinary:
    harm = judged['harm'][n_ordinary - start:].astype(jnp.float32)
    score = jnp.concatenate([rm, recovery_lib.recovery_reward(harm, spec.recovery_coef)])
  score = token_rewards.apply_missing_eos_penalty(score, episodes.ended_with_eos,
                                                  spec.missing_eos_penalty)
  return Scores(score=score, reward_model=rm, judged=judged, judged_from=start)


def shared_group_size(group_size: int) -> int:
  """How many rows share a prompt pass: `group_size` on one device; 1 on a mesh, where copying
  cache rows across the batch axis could gather them between data shards (not measured at scale)."""
  return group_size if single_device() else 1


def prompt_groups(rows: int, group_size: int) -> np.ndarray | None:
  """Group ids [rows] of `group_size` contiguous rows with one prompt each (GRPO's G samples of
  a prompt, `sample_episodes`' layout), or None when nothing is shared (G = 1, or a mesh:
  `shared_group_size`)."""
  group_size = shared_group_size(group_size)
  if group_size <= 1 or rows % group_size:
    return None
  return np.arange(rows) // group_size


def sequence_hidden(model: Transformer, params: PyTree, tokens: jax.Array, mask: jax.Array,
                    prompt_len: int, group_size: int = 1, read: read_positions.Read = None
                    ) -> jax.Array:
  """Final hidden states [E, R, D] of prompt ⊕ response rows at the positions of `read`
  (`models.read_positions`; None: all P + N); with `group_size` G > 1 each group's prompt runs
  once (`models.shared_prefix`: the same numbers, 1/G of the prompt work)."""
  groups = prompt_groups(tokens.shape[0], group_size)
  if groups is None:
    return model.apply({'params': params}, tokens, mask, read=read,
                       method=Transformer.hidden_states)
  return shared_prefix.hidden_states(model, params, tokens, mask, None, prompt_len, groups, read)


def response_hidden(model: Transformer, params: PyTree, episodes: Episodes,
                    group_size: int = 1) -> jax.Array:
  """Final hidden states [E, N, D] at the positions predicting each response token.

  Response token t is predicted at sequence position P - 1 + t. `group_size`: rows come in
  contiguous groups of that many with one prompt (`sequence_hidden`).
  """
  seq, seq_mask = episodes.sequence
  p, n = episodes.prompt_tokens.shape[1], episodes.tokens.shape[1]
  return sequence_hidden(model, params, seq, seq_mask, p, group_size, read=slice(p - 1, p - 1 + n))


def response_logits(model: Transformer, params: PyTree, episodes: Episodes
                    ) -> tuple[jax.Array, jax.Array]:
  """Logits predicting each response token [E, N, V] and the hidden states there [E, N, D].

  The full [E, N, V] buffer: for tests and small analyses only; the steps use
  `response_token_stats`, which never holds it.
  """
  hidden = response_hidden(model, params, episodes)
  return model.apply({'params': params}, hidden, method=Transformer.logits), hidden


def response_token_stats(model: Transformer, params: PyTree, episodes: Episodes,
                         temperature: float, chunk_size: int = 0, entropy: str = 'none',
                         top_k: int = 0, top_p: float = 1.0, group_size: int = 1
                         ) -> tuple[jax.Array, jax.Array | None, jax.Array]:
  """(log pi(y_t | x, y_<t) [E, N], entropy [E, N] or None, hidden states [E, N, D]).

  Temperature-scaled (and top-k / top-p filtered when given); the LM head runs over
  `chunk_size` response tokens at a time (`rollout.chunked_logprobs.token_stats`, whose
  `entropy` modes are 'none' / 'value' / 'grad'); `group_size` as in `response_hidden`.
  """
  hidden = response_hidden(model, params, episodes, group_size)
  logprobs, token_entropy = chunked_logprobs.token_stats(
      hidden, head_kernel(params, model.config), episodes.tokens, model.config, temperature,
      chunk_size, entropy, top_k=top_k, top_p=top_p)
  return logprobs, token_entropy, hidden


def response_logprobs(model: Transformer, params: PyTree, episodes: Episodes,
                      temperature: float, chunk_size: int = 0, group_size: int = 1) -> jax.Array:
  """log pi(y_t | x, y_<t) of every response token under temperature-scaled logits [E, N]."""
  return response_token_stats(model, params, episodes, temperature, chunk_size,
                              group_size=group_size)[0]


def response_values(value_model: Transformer, value_params: PyTree, episodes: Episodes
                    ) -> jax.Array:
  """V of the state before each response token [E, N] (value model's output at P - 1 + t)."""
  seq, seq_mask = episodes.sequence
  p, n = episodes.prompt_tokens.shape[1], episodes.tokens.shape[1]
  values = value_model.apply({'params': value_params}, seq, seq_mask, read=slice(p - 1, p - 1 + n))
  return values.astype(jnp.float32)


def episode_metrics(episodes: Episodes, scores: Scores, n_ordinary: int) -> dict[str, jax.Array]:
  """Reward, harm and length statistics, split into ordinary and recovery rollouts."""
  ordinary = slice(0, n_ordinary)
  recovery = slice(n_ordinary, None)
  lengths = jnp.sum(episodes.response_mask, axis=1).astype(jnp.float32)
  generated = jnp.sum(episodes.generated_mask, axis=1).astype(jnp.float32)
  out = {
      'reward/mean': jnp.mean(scores.score[ordinary]),
      'reward/std': jnp.std(scores.score[ordinary]),
      'reward_model/mean': jnp.mean(scores.reward_model),
      'response/length_mean': jnp.mean(lengths[ordinary]),
      'response/eos_rate': jnp.mean(episodes.ended_with_eos[ordinary].astype(jnp.float32)),
  }
  harmful = episodes.is_harmful[ordinary].astype(jnp.float32)
  # judged[name][i] is row judged_from + i.
  rec_offset = n_ordinary - scores.judged_from
  # Judged from a later row (recovery rows only): no ordinary-row metric.
  ordinary_judged = scores.judged if scores.judged_from == 0 else {}
  for name, value in ordinary_judged.items():
    value = value.astype(jnp.float32)
    out[f'{name}/ordinary'] = jnp.mean(value[ordinary])
    # Harm on harmful prompts is the attack-success rate at depth 0.
    out[f'{name}/harmful_prompts'] = (
        jnp.sum(value[ordinary] * harmful) / jnp.maximum(jnp.sum(harmful), 1.0))
  if episodes.tokens.shape[0] > n_ordinary:
    out['recovery/harm_rate'] = jnp.mean(
        scores.judged['harm'][rec_offset:].astype(jnp.float32))
    out['recovery/depth_mean'] = jnp.mean(episodes.depth[recovery].astype(jnp.float32))
    out['recovery/reward_mean'] = jnp.mean(scores.score[recovery])
    out['recovery/generated_length_mean'] = jnp.mean(generated[recovery])
  return out
