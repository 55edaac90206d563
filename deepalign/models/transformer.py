"""`Transformer`: the decoder (embeddings, blocks, final norm) and its LM / score / value head."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Renamed: `attention_mask` is also the name of the padding-mask argument below.
from deepalign.models.attention import Attention, attention_mask as slot_mask
from deepalign.models import dense_dot, read_positions
from deepalign.models.config import ModelConfig
from deepalign.models.kv_cache import KVCache
from deepalign.models.lm_head import lm_logits
from deepalign.models.mlp import MLP
from deepalign.models.norms import make_norm
from deepalign.models.rope import rope_tables
from deepalign.models.sharding import BLT_EMBED, constrain


class HeadKernel(nn.Module):
  """Holds the untied LM-head kernel [D, V] (param 'kernel'); `lm_head.lm_logits` applies it."""
  in_features: int
  features: int
  param_dtype: Any
  kernel_init: Any

  def setup(self):
    self.kernel = self.param('kernel', self.kernel_init, (self.in_features, self.features),
                             self.param_dtype)


class Block(nn.Module):
  """Pre-norm residual block; Gemma2 adds post-norms on both branches (sandwich).

  The argument order is `nn.scan`'s: the carry x, the per-layer inputs (sliding flag, this
  layer's cache), then what every layer shares (masks, rope, cache index).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, sliding: jax.Array | None,
               kv: tuple[jax.Array, jax.Array] | None,
               masks: tuple[jax.Array, jax.Array | None],
               rope: tuple[jax.Array, jax.Array] | None, index: jax.Array | None,
               read: read_positions.Read = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """x [B, T, D] -> ([B, R, D], updated layer cache).

    masks = (full, window) [B, T, S]: with window None, `full` is this layer's mask; otherwise
    (scanned Gemma-2) the layer's flag `sliding` ([] bool) picks one of the two. `read`: the
    R positions whose outputs are computed (`read_positions`; keys and values at all T).
    """
    cfg = self.config
    full, window = masks
    mask = full if window is None else jnp.where(sliding, window, full)
    h, kv = Attention(cfg, name='attn')(make_norm(cfg, 'input_norm')(x), mask, rope, kv, index,
                                        read)
    if cfg.sandwich_norm:
      h = make_norm(cfg, 'post_attn_norm')(h)
    x = read_positions.take(x, read) + h
    h = MLP(cfg, name='mlp')(make_norm(cfg, 'pre_mlp_norm')(x))
    if cfg.sandwich_norm:
      h = make_norm(cfg, 'post_mlp_norm')(h)
    return constrain(x + h, BLT_EMBED), kv


def remat_policy(name: str) -> Any:
  """The `jax.checkpoint` policy of a `ModelConfig.remat` name ('full': None, save nothing)."""
  return None if name == 'full' else getattr(jax.checkpoint_policies, name)


def block_class(cfg: ModelConfig) -> Any:
  """`Block`, rematerialised by `cfg.remat` and, with `cfg.scan_layers`, scanned over the layers.

  Scanned: params stacked [L, ...] with the logical axis 'layers' in front, the cache read and
  written per layer through the scan, and the per-layer sliding flag as a scanned input.
  """
  cls = Block
  if cfg.remat != 'none':
    # Inside a scan, CSE cannot merge the recomputation with the forward (MaxText's setting).
    cls = nn.remat(cls, policy=remat_policy(cfg.remat), prevent_cse=not cfg.scan_layers)
  if cfg.scan_layers:
    cls = nn.scan(cls, variable_axes={'params': 0}, split_rngs={'params': True},
                  in_axes=(0, 0, nn.broadcast, nn.broadcast, nn.broadcast),
                  length=cfg.num_layers, metadata_params={nn.PARTITION_NAME: 'layers'})
  return cls


def last_token_positions(attention_mask: jax.Array) -> jax.Array:
  """[B] int32: each row's last real (mask > 0) position of attention_mask [B, T]; 0 if none."""
  t = attention_mask.shape[1]
  return jnp.max(jnp.where(attention_mask.astype(bool), jnp.arange(t), 0), axis=1)


def default_positions(attention_mask: jax.Array, cache: KVCache | None = None) -> jax.Array:
  """[B, T] int32: cumsum(mask) - 1 clipped at 0, continued after the cache's real tokens."""
  positions = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1
  if cache is not None:
    positions = positions + cache.num_tokens()[:, None]
  return jnp.maximum(positions, 0)


class Transformer(nn.Module):
  """A decoder-only transformer of any family in `ModelConfig`, with the config's head.

  __call__(tokens [B, T] int32, attention_mask [B, T] (1 = real token, 0 = padding; packed rows
  hold segment ids 1, 2, ... and a token attends within its segment only), positions [B, T],
  cache) -> lm: logits [B, T, V]; score: [B] (num_labels 1) or [B, num_labels] read at the
  last real token; value: [B, T]. With `cache`, returns (output, updated cache).
  """
  config: ModelConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.compute_dtype,
                          param_dtype=cfg.params_dtype,
                          embedding_init=nn.with_logical_partitioning(init, ('vocab', 'embed')))
    if cfg.position_embedding == 'learned':
      self.pos_embed = nn.Embed(cfg.max_position_embeddings, cfg.hidden_size,
                                dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                                embedding_init=nn.with_logical_partitioning(init, (None, 'embed')))
    block = block_class(cfg)
    if cfg.scan_layers:
      self.layers = block(cfg)  # params['layers'], leaves [L, ...]
    else:
      self.layers = [block(cfg) for _ in range(cfg.num_layers)]  # params['layers_0'], ...
    self.final_norm = make_norm(cfg, 'final_norm')
    if cfg.head == 'lm' and not cfg.tie_word_embeddings:
      # A bare [D, V] kernel (params['lm_head']['kernel'], as nn.Dense had): `lm_head.lm_logits`
      # applies it, so the module and the chunked log-prob path share one head function.
      self.lm_head = HeadKernel(cfg.hidden_size, cfg.vocab_size, cfg.params_dtype,
                                nn.with_logical_partitioning(init, ('embed', 'vocab')))
    if cfg.head != 'lm':
      self.score = nn.Dense(cfg.num_labels, use_bias=False, dtype=cfg.compute_dtype,
                            param_dtype=cfg.params_dtype, dot_general=dense_dot.dot_general,
                            kernel_init=nn.with_logical_partitioning(init, ('embed', None)))

  def hidden_states(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
                    positions: jax.Array | None = None, cache: KVCache | None = None,
                    append: bool = False, read: read_positions.Read = None,
                    rope: tuple[jax.Array, jax.Array] | None = None
                    ) -> jax.Array | tuple[jax.Array, KVCache]:
    """[B, R, D] after the final norm (and the updated cache when `cache` is given).

    `read`: the positions of this call's T whose states are returned (`read_positions`: a
    static slice, or per-row positions [B, R]; None = all, R = T). With `trim_last_layer`,
    unscanned and without remat, the last layer computes keys and values at every position and
    its queries, attention, output projection and MLP at those only; otherwise every position
    runs and the normed states are sliced.

    With `cache`, this call's keys and values are written at slots index..index+T-1 of its
    preallocated buffers (decoding). With `append` too, every slot of `cache` must already be
    written (index == max_len, e.g. a prompt's cache of exactly its length); the keys and values
    are concatenated after them instead, and the returned cache has max_len + T slots. Same
    numbers; no buffer is preallocated, written into, or copied under autodiff (`shared_prefix`).

    `rope`: this call's (cos, sin) [B, T, hd/2], `rope.rope_tables(config, positions)` computed
    by the caller; None computes them here. A decode loop computes every step's tables once,
    before the loop: XLA:CPU fuses cos / sin into each fusion that reads them and evaluates them
    per element there (W-tiny: 16 x 4 heads x 64 per q and k of every layer, each step).
    """
    cfg = self.config
    b, t = tokens.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    if positions is None:
      positions = default_positions(attention_mask, cache)
    x = self.embed(tokens)
    if cfg.scale_embeddings:
      # HF rounds sqrt(D) to the compute dtype before multiplying (Gemma's normalizer).
      x = x * jnp.asarray(cfg.hidden_size ** 0.5, cfg.compute_dtype)
    if cfg.position_embedding == 'learned':
      x = x + self.pos_embed(positions)
    x = constrain(x, BLT_EMBED)
    if rope is None:
      rope = rope_tables(cfg, positions) if cfg.position_embedding == 'rope' else None
    elif cfg.position_embedding != 'rope':
      raise ValueError(f'hidden_states: rope tables were given, but the model has '
                      f'position_embedding={cfg.position_embedding!r}.')

    valid = attention_mask.astype(bool)
    if cache is None:
      query_slots = key_slots = jnp.arange(t)
      key_valid, index = valid, None
    elif append:
      # index None tells the layers to concatenate (attention.py).
      index, start = None, cache.max_len
      key_valid = jnp.concatenate([cache.valid, valid], axis=1)
      query_slots, key_slots = start + jnp.arange(t), jnp.arange(start + t)
    else:
      index = cache.index
      key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, index))
      query_slots, key_slots = index + jnp.arange(t), jnp.arange(cache.max_len)
    full = slot_mask(query_slots, key_slots, key_valid, None)
    sliding = None
    if any(cfg.is_sliding(i) for i in range(cfg.num_layers)):
      sliding = slot_mask(query_slots, key_slots, key_valid, cfg.sliding_window)
    if cache is None:
      # Packed rows carry segment ids (1, 2, ...) in the mask: a token sees its own segment only.
      # A 0/1 mask is one segment per row, so this changes nothing there.
      same = attention_mask[:, :, None] == attention_mask[:, None, :]
      full = full & same
      sliding = None if sliding is None else sliding & same

    # Scanned, one program runs every layer (the last cannot run fewer positions); under remat
    # a slice is not an argument `jax.checkpoint` takes. There the states are sliced afterwards.
    trim_last = cfg.trims_last_layer
    if cfg.scan_layers:
      x, kv = self._scanned_layers(x, full, sliding, cache, rope, index)
    else:
      new_keys, new_values = [], []
      for i, layer in enumerate(self.layers):
        kv = None if cache is None else (cache.keys[i], cache.values[i])
        mask = sliding if cfg.is_sliding(i) else full
        layer_read = read if trim_last and i == cfg.num_layers - 1 else None
        x, kv = layer(x, None, kv, (mask, None), rope, index, layer_read)
        new_keys.append(None if kv is None else kv[0])
        new_values.append(None if kv is None else kv[1])
      kv = (tuple(new_keys), tuple(new_values))
    x = self.final_norm(x)
    if not trim_last:
      # After the norm: the numbers of the untrimmed forward, bit for bit, whatever R is.
      x = read_positions.take(x, read)
    if cache is None:
      return x
    return x, KVCache(keys=kv[0], values=kv[1], valid=key_valid, index=cache.index + t)

  def _scanned_layers(self, x, full, sliding, cache, rope, index):
    """The scanned stack: x [B, T, D] -> (x, (keys, values) [L, B, K, S, hd] or None)."""
    cfg = self.config
    if cfg.has_mixed_layers():
      flags = jnp.asarray([cfg.is_sliding(i) for i in range(cfg.num_layers)])
      masks = (full, sliding)
    else:
      flags, masks = None, (sliding if cfg.is_sliding(0) else full, None)
    kv = None if cache is None else (cache.keys, cache.values)
    return self.layers(x, flags, kv, masks, rope, index)

  def logits(self, hidden: jax.Array) -> jax.Array:
    """LM logits [..., V] float32 from final hidden states [..., D] (tied or untied, soft-capped).

    The head runs in float32 whatever the compute dtype (see `lm_head.py`).
    """
    cfg = self.config
    kernel = self.embed.embedding.T if cfg.tie_word_embeddings else self.lm_head.kernel
    return lm_logits(hidden, kernel, cfg)

  def head_outputs(self, hidden: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """The config's head on hidden [B, T, D]: logits [B,T,V], scores [B](/[B,L]) or values [B,T]."""
    cfg = self.config
    if cfg.head == 'lm':
      return self.logits(hidden)
    if cfg.head == 'value':
      return self.score(hidden)[..., 0]
    b, t, _ = hidden.shape
    if attention_mask is None:
      attention_mask = jnp.ones((b, t), jnp.int32)
    scores = self.score(hidden[jnp.arange(b), last_token_positions(attention_mask)])
    return scores[:, 0] if cfg.num_labels == 1 else scores

  def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None = None,
               positions: jax.Array | None = None, cache: KVCache | None = None,
               read: read_positions.Read = None) -> Any:
    """The head's outputs (see the class); `read` (lm / value heads, no cache): at those
    positions only ([B, R, V] / [B, R])."""
    if read is not None and (cache is not None or self.config.head == 'score'):
      raise ValueError('Transformer: read= is for the lm and value heads without a cache')
    if read is not None and not self.config.trims_last_layer:
      # The head over every position, then the read ones: the untrimmed numbers bit for bit
      # (a head over fewer rows sums its weight gradient in another order).
      return read_positions.take(self(tokens, attention_mask, positions), read)
    if read is not None:
      return self.head_outputs(self.hidden_states(tokens, attention_mask, positions, read=read))
    if cache is None and self.config.head == 'score':
      # The score head reads one position per row: the last layer runs only there.
      mask = jnp.ones(tokens.shape, jnp.int32) if attention_mask is None else attention_mask
      read = last_token_positions(mask)[:, None]
      return self.head_outputs(self.hidden_states(tokens, mask, positions, read=read))
    if cache is None:
      return self.head_outputs(self.hidden_states(tokens, attention_mask, positions),
                               attention_mask)
    hidden, cache = self.hidden_states(tokens, attention_mask, positions, cache)
    return self.head_outputs(hidden, attention_mask), cache



def init_params(model: Transformer, rng: jax.Array) -> Any:
  """Fresh parameters of `model` as plain arrays (logical-axis boxes removed)."""
  variables = jax.jit(model.init)(rng, jnp.zeros((1, 1), jnp.int32))
  return nn.meta.unbox(variables)['params']
