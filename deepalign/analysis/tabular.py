"""A tabular autoregressive policy small enough to enumerate: the exact-mode ground truth.

The policy has its own logits for every prefix. Token ids are 0..V-1; `eos_id` ends a
response and is absorbing: after it every position holds `eos_id` with probability 1
(no parameter touches those positions, exactly as padding after EOS in a real rollout).

Prefixes are numbered as nodes of the V-ary tree: the prefix (y_1..y_t) is node
`offset[t] + code(y_1..y_t)` with `offset[t] = (V^t - 1) / (V - 1)` and `code` the base-V
number of the tokens. Params are `{'logits': [P, V]}` where P = number of prefixes of
length < T; row `node` holds the logits of pi(y_{t+1} | prefix).
"""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np

from deepalign.errors import UserError

# Exact mode materializes V^(T+1) prefix nodes; beyond this it is a job for the MC estimators.
MAX_NODES = 1 << 22

Params = dict


@dataclasses.dataclass(frozen=True)
class TabularPolicy:
  """pi(y_t | y_<t) given by a table of logits; responses of exactly `horizon` positions.

  Attributes:
    vocab_size: V >= 2, token ids 0..V-1.
    horizon: T >= 1, the number of response positions (a response without EOS is cut at T).
    eos_id: the end-of-sequence id; absorbing.
  """
  vocab_size: int
  horizon: int
  eos_id: int = 0

  def __post_init__(self):
    if self.vocab_size < 2:
      raise UserError(f'TabularPolicy vocab_size={self.vocab_size}: use at least 2 tokens.')
    if self.horizon < 1:
      raise UserError(f'TabularPolicy horizon={self.horizon}: use at least 1 position.')
    if not 0 <= self.eos_id < self.vocab_size:
      raise UserError(f'TabularPolicy eos_id={self.eos_id}: must be in [0, {self.vocab_size}).')
    if self.num_nodes > MAX_NODES:
      raise UserError(
          f'TabularPolicy vocab_size={self.vocab_size}, horizon={self.horizon} has '
          f'{self.num_nodes} prefixes (> {MAX_NODES}): shrink them, or use the Monte-Carlo '
          'estimators in deepalign.analysis for models too large to enumerate.')

  # ---- the prefix tree ----------------------------------------------------------------

  @property
  def num_nodes(self) -> int:
    """Prefixes of length 0..T (the whole tree)."""
    return (self.vocab_size ** (self.horizon + 1) - 1) // (self.vocab_size - 1)

  @property
  def num_param_rows(self) -> int:
    """Prefixes of length 0..T-1: the ones that choose a next token."""
    return (self.vocab_size ** self.horizon - 1) // (self.vocab_size - 1)

  @property
  def offsets(self) -> np.ndarray:
    """[T+1] first node id of each prefix length."""
    v = self.vocab_size
    return np.array([(v ** t - 1) // (v - 1) for t in range(self.horizon + 1)], np.int32)

  @functools.partial(jax.jit, static_argnums=0)
  def node_ids(self, tokens: jax.Array) -> jax.Array:
    """Node of every prefix of every row.

    Args:
      tokens: int [N, T] responses.
    Returns:
      int32 [N, T+1]; column t is the node of (y_1..y_t), column 0 the empty prefix.
    """
    tokens = jnp.asarray(tokens, jnp.int32)

    def step(code, tok):
      code = code * self.vocab_size + tok
      return code, code

    _, codes = jax.lax.scan(step, jnp.zeros(tokens.shape[0], jnp.int32), tokens.T)
    codes = jnp.concatenate([jnp.zeros((1, tokens.shape[0]), jnp.int32), codes], axis=0).T
    return codes + jnp.asarray(self.offsets)[None, :]

  # ---- enumeration --------------------------------------------------------------------

  @functools.cached_property
  def sequences(self) -> np.ndarray:
    """int32 [N, T]: every response with non-zero probability under some params.

    That is every token string in which the first EOS (if any) is followed only by EOS.
    """
    rows = np.array(list(itertools.product(range(self.vocab_size), repeat=self.horizon)),
                    np.int32).reshape(-1, self.horizon)
    is_eos = rows == self.eos_id
    seen_eos = np.cumsum(is_eos, axis=1) - is_eos > 0  # an EOS strictly before t
    valid = np.all(~seen_eos | is_eos, axis=1)
    return rows[valid]

  def response_mask(self, tokens: jax.Array) -> jax.Array:
    """[N, T] 1 where the token exists (up to and including the first EOS), as in rollout."""
    is_eos = (tokens == self.eos_id).astype(jnp.int32)
    return (jnp.cumsum(is_eos, axis=1) - is_eos == 0).astype(jnp.int32)

  # ---- the policy -----------------------------------------------------------------------

  def init_params(self, rng: jax.Array, scale: float = 1.0) -> Params:
    """Random logits ~ N(0, scale^2): {'logits': [P, V]}."""
    return {'logits': scale * jax.random.normal(rng, (self.num_param_rows, self.vocab_size))}

  def params_from_logprobs(self, node_logprobs: jax.Array) -> Params:
    """Params whose conditionals are the given log-probabilities.

    Args:
      node_logprobs: [num_nodes or P, V] log pi(v | node) (only the first P rows are used).
    """
    return {'logits': node_logprobs[:self.num_param_rows]}

  @functools.partial(jax.jit, static_argnums=0)
  def logits(self, params: Params, tokens: jax.Array) -> jax.Array:
    """Teacher-forced logits [N, T, V]: row t predicts y_{t+1} from (y_1..y_t).

    After EOS the policy is absorbing and these logits are not used (response_mask is 0).
    """
    nodes = self.node_ids(tokens)[:, :self.horizon]
    return params['logits'][nodes]

  @functools.partial(jax.jit, static_argnums=0, static_argnames=('per_position',))
  def token_logprobs(self, params: Params, tokens: jax.Array,
                     per_position: bool = False) -> jax.Array:
    """log pi(y_t | y_<t) [N, T]; 0 after EOS (the absorbing state has probability 1).

    Args:
      params: {'logits': [P, V]}, or with per_position=True {'logits': [T, P, V]}: position t
        reads its own copy, so d/d(copy t) differentiates only the factor at position t.
      tokens: int [N, T].
    """
    tokens = jnp.asarray(tokens, jnp.int32)
    nodes = self.node_ids(tokens)[:, :self.horizon]
    if per_position:
      logits = params['logits'][jnp.arange(self.horizon)[None, :], nodes]
    else:
      logits = params['logits'][nodes]
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[..., None], -1)[..., 0]
    return jnp.where(self.response_mask(tokens) > 0, logp, 0.0)

  @functools.partial(jax.jit, static_argnums=0, static_argnames=('per_position',))
  def sequence_probs(self, params: Params, prefix_tokens: jax.Array | None = None,
                     prefix_len: int | jax.Array = 0, per_position: bool = False) -> jax.Array:
    """p(y) [N] over `self.sequences`, optionally conditioned on a forced prefix.

    With a prefix of length k the first k tokens are forced (probability 1, as in a prefill
    attack or a recovery rollout): p(y) = 1[y_<=k = prefix] * prod_{t>k} pi(y_t | y_<t).

    Args:
      prefix_tokens: int [F] with F <= T (or None); prefix_len: k <= F (may be traced).
    """
    seqs = jnp.asarray(self.sequences)
    logp = self.token_logprobs(params, seqs, per_position=per_position)
    positions = jnp.arange(self.horizon)
    free = positions >= prefix_len
    if prefix_tokens is None:
      match = jnp.ones(seqs.shape[0], bool)
    else:
      prefix = jnp.zeros(self.horizon, jnp.int32).at[:len(prefix_tokens)].set(prefix_tokens)
      match = jnp.all((seqs == prefix[None, :]) | free[None, :], axis=1)
    return jnp.where(match, jnp.exp(jnp.sum(jnp.where(free[None, :], logp, 0.0), axis=1)), 0.0)

  @functools.partial(jax.jit, static_argnums=0)
  def continue_fn(self, params: Params, context, forced_tokens: jax.Array,
                  forced_len: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sample responses whose first forced_len[i] tokens are forced_tokens[i] (rollout semantics).

    Args:
      context: ignored (the tabular policy has a single, implicit prompt).
      forced_tokens: int [N, F], F <= T; forced_len: int [N].
    Returns:
      tokens int32 [N, T] (EOS repeated after the first EOS), response_mask int32 [N, T].
    """
    del context
    n, f = forced_tokens.shape
    forced = jnp.zeros((n, self.horizon), jnp.int32).at[:, :f].set(forced_tokens[:, :self.horizon])
    offsets = jnp.asarray(self.offsets)
    keys = jax.random.split(rng, self.horizon)

    def step(carry, t):
      code, alive = carry
      sampled = jax.random.categorical(keys[t], params['logits'][offsets[t] + code])
      tok = jnp.where(t < forced_len, forced[:, t], sampled)
      tok = jnp.where(alive, tok, self.eos_id).astype(jnp.int32)
      return (code * self.vocab_size + tok, alive & (tok != self.eos_id)), (tok, alive)

    init = (jnp.zeros(n, jnp.int32), jnp.ones(n, bool))
    _, (tokens, alive) = jax.lax.scan(step, init, jnp.arange(self.horizon))
    return tokens.T, alive.T.astype(jnp.int32)

  def judge_from_harm(self, h: jax.Array):
    """A judge_fn(context, tokens [N, T], mask) -> [N] that looks up h [len(sequences)].

    The returned function is one object per call: build it once and reuse it, since jit
    caches compiled programs on it.
    """
    table = jnp.zeros(self.num_nodes, jnp.asarray(h).dtype).at[
        self.node_ids(jnp.asarray(self.sequences))[:, -1]].set(h)

    def judge_fn(context, tokens, mask):
      del context, mask
      return table[self.node_ids(tokens)[:, -1]]

    return judge_fn

  def logprob_fn(self, params: Params, context, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """The estimators' `logprob_fn` interface: log pi(y_t | y_<t) [N, T]."""
    del context, mask
    return self.token_logprobs(params, tokens)

  def next_token_logprobs_fn(self, params: Params, context, tokens: jax.Array,
                             mask: jax.Array) -> jax.Array:
    """The full-vocabulary gradient's `logprob_fn`: log pi(. | y_<t) [N, T, V]."""
    del context, mask
    return jax.nn.log_softmax(self.logits(params, tokens), axis=-1)

  def logits_fn(self, params: Params, context, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """The estimators' `logits_fn` interface: [N, T, V]."""
    del context, mask
    return self.logits(params, tokens)
