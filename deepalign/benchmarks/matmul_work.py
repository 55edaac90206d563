"""How much matmul work a benchmark does, and how fast this machine can do matmuls at all.

A seconds figure alone cannot say whether a goal is reachable. These functions count the
floating-point operations of the matmuls (dense projections, attention scores and values, heads)
that deepalign's implementation runs for a W-tiny workload, and measure this machine's float32
matmul rate on one large square matmul, so a benchmark can report the rate it reached and the
time the same work would take at the machine's peak (`seconds_at_peak`): a floor no program
doing this work on this machine can beat.

Counts follow the implementation (what the XLA programs compute), not an idealized minimum:
a forward over a full sequence computes every query x key score (the causal mask is applied to
them, not skipped); the sampler's prefill and decode steps attend over the whole KV-cache
buffer of their decode phase; the policy's LM head runs on the response positions only
(`rl_episodes.response_logits`), and the last layer's queries, attention and MLP only at the
positions a caller reads (`models.read_positions`).
A backward pass costs two forwards' matmuls (input and weight gradients). Elementwise work
(norms, softmax, rope, the optimizer) is not counted: it is small next to the matmuls and
runs far from any matmul peak.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp

from deepalign.benchmarks import workload
from deepalign.models import read_positions
from deepalign.models.config import ModelConfig
from deepalign.rollout.generate import decode_phases

PEAK_MATRIX_SIZE = 2048


def forward_flops(cfg: ModelConfig, rows: int, query_len: int, key_len: int,
                  head_tokens: int, read_tokens: int | None = None) -> float:
  """Matmul FLOPs of one forward of `cfg` over `rows` x `query_len` tokens.

  Each query attends to `key_len` keys (all of them are computed, masked or not); the head
  (LM head of vocab outputs, or a 1-output value/score head) runs on `rows` x `head_tokens`.
  The last layer computes keys and values at every token and its queries, attention, output
  projection and MLP at `read_tokens` per row only (the positions the caller reads,
  `models.read_positions`; default all `query_len`).
  """
  d, hd, layers = cfg.hidden_size, cfg.head_dim, cfg.num_layers
  q_width, kv_width = cfg.num_heads * hd, cfg.num_kv_heads * hd
  read = query_len if read_tokens is None else read_tokens
  keys_values = 2 * d * 2 * kv_width  # per token
  mlp = 2 * d * cfg.intermediate_size * (3 if cfg.mlp_type == 'gated' else 2)
  # Per query: the q and o projections, the MLP, the q.k scores and probs.v.
  per_query = 2 * d * 2 * q_width + mlp + 2 * 2 * key_len * q_width
  layer = lambda queries: rows * (query_len * keys_values + queries * per_query)
  head_width = cfg.vocab_size if cfg.head == 'lm' else (cfg.num_labels if cfg.head == 'score' else 1)
  head = 2 * rows * head_tokens * d * head_width
  return float((layers - 1) * layer(query_len) + layer(read) + head)


def generation_flops(sizes: workload.Sizes, group_size: int = 1) -> float:
  """Matmul FLOPs of sampling N tokens for B x P prompts (`rollout.generate`): a prefill of the
  prompts (one row per group of `group_size` copies of a prompt; the last layer's queries at
  the last position only) into the KV cache of the first decode phase, then N - 1 decode steps
  of one token, each attending over its phase's whole cache (`generate.decode_phases`: up to
  P + N - 1 slots), with the LM head on the last token."""
  b, p, n = sizes.batch, sizes.prompt_len, sizes.new_tokens
  policy = sizes.config('lm')
  phases = decode_phases(p, n)
  flops = forward_flops(policy, b // group_size, p, phases[0][1], 1, read_tokens=1)
  start = 1
  for t_end, slots in phases:
    flops += (t_end - start) * forward_flops(policy, b, 1, slots, 1)
    start = t_end
  return flops


def grouped_forward_flops(cfg: ModelConfig, rows: int, group_size: int, prompt_len: int,
                          length: int, head_tokens: int, read: slice | int | None = None
                          ) -> float:
  """`forward_flops` over `rows` x `length` tokens whose groups of `group_size` rows share the
  first `prompt_len` (`models.shared_prefix`: the prompt once per group into a cache of its
  `prompt_len` slots, the rest of every row appended on top); group_size 1 = the plain forward.

  `read` (the positions the caller reads, as `shared_prefix.hidden_states` splits them): a
  static slice of the `length` positions, an int k for k per-row positions (a score head's
  last token: the prefix in full, k positions of the rest), or None for all.
  """
  if group_size <= 1:
    count = read if isinstance(read, int) else read_positions.count(read, length)
    return forward_flops(cfg, rows, length, length, head_tokens, count)
  rest = length - prompt_len
  if read is None:
    prefix_reads, rest_reads = prompt_len, rest
  elif isinstance(read, int):
    prefix_reads, rest_reads = prompt_len, read
  else:
    start, stop, _ = read.indices(length)
    # A call whose part the slice misses still reads one position (`shared_prefix._split_read`).
    prefix_reads = max(len(range(start, min(stop, prompt_len))), 1)
    rest_reads = max(len(range(max(start, prompt_len), stop)), 1)
  return (forward_flops(cfg, rows // group_size, prompt_len, prompt_len, 0, prefix_reads)
          + forward_flops(cfg, rows, rest, length, head_tokens, rest_reads))


def ppo_iteration_flops(sizes: workload.Sizes, logprobs_from_sampler: bool = True,
                        epochs: int = 1) -> dict[str, float]:
  """Matmul FLOPs of one W-tiny PPO iteration as `make_ppo_step` runs it, split like the
  benchmark's pieces: {'sample', 'score', 'update', 'total'}.

  sample: `generation_flops`. score: the reward model over [B, P + N] (score head at the last
  position), the reference (and, unless the sampler's log-probs are used, the old policy) over
  [B, P + N] with the LM head on the N response positions, the value model over [B, P + N].
  update: per epoch, a forward and a backward (2 forwards) of the policy and of the value model
  over every rollout.
  """
  b, p, n = sizes.batch, sizes.prompt_len, sizes.new_tokens
  policy, value, reward = sizes.config('lm'), sizes.config('value'), sizes.config('score')
  length = p + n
  sample = generation_flops(sizes)
  # Policy and value read the N positions that predict the response, the reward the last one.
  policy_forward = forward_flops(policy, b, length, length, n, read_tokens=n)
  value_forward = forward_flops(value, b, length, length, n, read_tokens=n)
  score = (forward_flops(reward, b, length, length, 1, read_tokens=1) + policy_forward
           + value_forward + (0.0 if logprobs_from_sampler else policy_forward))
  update = epochs * 3 * (policy_forward + value_forward)
  return {'sample': sample, 'score': score, 'update': update, 'total': sample + score + update}


def dpo_step_flops(sizes: workload.Sizes, shared_prefix_len: int = 0) -> float:
  """Matmul FLOPs of one W-tiny DPO step: policy forward + backward and the reference forward
  over the 2B stacked chosen/rejected rows of P + N tokens.

  shared_prefix_len S = 0: every row in full, LM head on the T - 1 positions that predict a
  token (`sequence_logprobs.target_logprobs`). S > 0 (`shared_target_logprobs`): the first S
  tokens of each pair once (B rows; keys over its S slots), the other T - S tokens of every row on top
  (2B rows), LM head on those T - S positions only.
  """
  length, s = sizes.prompt_len + sizes.new_tokens, shared_prefix_len
  # A pair is a group of 2 rows sharing S columns; the positions that predict a target are
  # read (the last layer's queries and MLP, and the head, run there only).
  read = slice(max(s - 1, 0), length - 1)
  group, head_tokens = (2, length - s) if s > 0 else (1, length - 1)
  return 4 * grouped_forward_flops(sizes.config('lm'), 2 * sizes.batch, group, s, length,
                                   head_tokens, read)


@dataclasses.dataclass(frozen=True)
class MatmulPeak:
  """The best float32 rate of a jitted [n, n] x [n, n] matmul on the default device."""
  gflops: float
  size: int


def measure_matmul_peak(size: int = PEAK_MATRIX_SIZE, calls: int = 10) -> MatmulPeak:
  """This machine's float32 matmul rate (GFLOP/s): the fastest of `calls` timed calls after one
  warm-up. One large square matmul is the best case XLA reaches on this device, the usual
  yardstick for "fraction of peak"; the fastest call, not the median, because a peak is a best
  case and a shared machine only ever slows calls down."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  seconds = []
  # Its own loop, not timing.time_calls: that one times the benchmark's calls (and tests spy on it).
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(matmul(a, b))
    seconds.append(time.perf_counter() - start)
  return MatmulPeak(gflops=2 * size ** 3 / min(seconds) / 1e9, size=size)


def work_figures(flops: float, seconds: float, peak: MatmulPeak) -> dict[str, float]:
  """The JSON keys every benchmark reports about its work: GFLOP per call, the rate reached,
  the measured peak, the fraction of it, and the seconds the work would take at that peak."""
  gflop = flops / 1e9
  return {'matmul_gflop': gflop, 'achieved_gflops': gflop / seconds,
          'matmul_peak_gflops': peak.gflops, 'matmul_peak_size': peak.size,
          'fraction_of_peak': gflop / seconds / peak.gflops,
          'seconds_at_peak': gflop / peak.gflops}


def format_work(result: dict) -> str:
  """One line on the work: GFLOP, rate reached, the machine's peak, the floor it implies."""
  return (f'work: {result["matmul_gflop"]:.1f} GFLOP of matmuls -> '
          f'{result["achieved_gflops"]:.0f} GFLOP/s ({result["fraction_of_peak"]:.0%} of this '
          f'machine\'s measured float32 matmul peak, {result["matmul_peak_gflops"]:.0f} GFLOP/s on '
          f'{result["matmul_peak_size"]}^2); at that peak the work alone takes '
          f'{result["seconds_at_peak"]:.3f} s')
