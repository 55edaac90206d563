"""Grouped-query self-attention with padding/causal/sliding-window masks, soft-capping and a KV cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from deepalign.models import dense_dot, fused_projections, read_positions
from deepalign.models.config import ModelConfig
from deepalign.models.norms import RMSNorm
from deepalign.models.rope import apply_rope
from deepalign.models.sharding import BLT_HEADS, BLT_KV_HEADS, CACHE, constrain


def attention_mask(query_slots: jax.Array, key_slots: jax.Array, key_valid: jax.Array,
                   window: int | None) -> jax.Array:
  """[B, T, S] bool: query at slot i may see key slot j (valid, j <= i, and i - j < window).

  query_slots [T], key_slots [S] are sequence/cache indices (not positions): with left padding
  real tokens are contiguous, so slot distance is token distance, as in HF's masks.
  """
  causal = key_slots[None, :] <= query_slots[:, None]
  if window is not None:
    causal &= (query_slots[:, None] - key_slots[None, :]) < window
  return key_valid[:, None, :] & causal[None]


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, scale: float,
                          softcap: float | None) -> jax.Array:
  """softmax(cap(q·k * scale) + mask) v with K kv heads shared by H/K query heads.

  q [B, T, H, hd], k/v [B, K, S, hd] (the cache layout: the batched dots read it without a
  transpose), mask [B, T, S] -> [B, T, H, hd]. Softmax in float32 (HF eager), probabilities
  cast back to the compute dtype.
  """
  b, t, h, hd = q.shape
  kv_heads = k.shape[1]
  q = q.reshape(b, t, kv_heads, h // kv_heads, hd)
  logits = jnp.einsum('btkgd,bksd->bkgts', q, k).astype(jnp.float32) * scale
  if softcap is not None:
    logits = softcap * jnp.tanh(logits / softcap)
  # A finite fill keeps fully masked rows (left-padding queries) finite instead of NaN.
  logits = jnp.where(mask[:, None, None, :, :], logits, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgts,bksd->btkgd', probs, v)
  return out.reshape(b, t, h, hd)


class Attention(nn.Module):
  """q/k/v/o projections (kernels split per head), optional q/k norm, rope, cache write."""
  config: ModelConfig
  layer: int = 0  # informational: the block's mask is chosen by the caller

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, rope: tuple[jax.Array, jax.Array] | None,
               kv: tuple[jax.Array, jax.Array] | None = None, index: jax.Array | None = None,
               read: read_positions.Read = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """x [B, T, D], mask [B, T, S] -> ([B, R, D], updated (keys, values) [B, K, S, hd] or None).

    Without `kv`, S == T and the keys are this call's; with `kv`, the new keys/values are
    written at slots index..index+T-1 of the buffers and all S slots are attended (by mask);
    with `kv` and index None, they are appended (S = the buffers' slots + T). Keys and values
    come from all T positions, queries (and the output) from the R positions of `read` only
    (`read_positions`; None: R = T).
    """
    cfg = self.config
    init = nn.initializers.normal(cfg.initializer_range)
    dense = lambda heads, axis_name, name: nn.DenseGeneral(
        features=(heads, cfg.head_dim), use_bias=cfg.qkv_bias, dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype, name=name, dot_general=dense_dot.dot_general,
        kernel_init=nn.with_logical_partitioning(init, ('embed', axis_name, 'kv')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (axis_name, 'kv')))
    if self.has_variable('params', fused_projections.QKV_KERNEL):
      q, k, v = self._fused_qkv(x)
      q = read_positions.take(q, read)
    else:
      q = dense(cfg.num_heads, 'heads', 'q_proj')(read_positions.take(x, read))
      k = dense(cfg.num_kv_heads, 'kv_heads', 'k_proj')(x)
      v = dense(cfg.num_kv_heads, 'kv_heads', 'v_proj')(x)
    q = constrain(q, BLT_HEADS)
    k, v = constrain(k, BLT_KV_HEADS), constrain(v, BLT_KV_HEADS)
    if cfg.qk_norm:
      qk_norm = lambda name: RMSNorm(eps=cfg.norm_eps, plus_one=cfg.norm_scale_plus_one,
                                     param_dtype=cfg.params_dtype, axis_name='kv', name=name)
      q, k = qk_norm('q_norm')(q), qk_norm('k_norm')(k)
    if rope is not None:
      q_rope = tuple(read_positions.take(table, read) for table in rope)
      q, k = apply_rope(q, *q_rope), apply_rope(k, *rope)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, hd]
    new_kv = None
    if kv is not None:
      def write(buffer: jax.Array, new: jax.Array) -> jax.Array:
        new = new.astype(buffer.dtype)
        if index is None:  # append: the buffer's slots are all written; these go after them
          return jnp.concatenate([buffer, new], axis=2)
        return jax.lax.dynamic_update_slice(buffer, new, (0, 0, index, 0))

      cache_k, cache_v = write(kv[0], k), write(kv[1], v)
      # Sharded over batch and KV heads, like the k / v that fill it.
      cache_k, cache_v = constrain(cache_k, CACHE), constrain(cache_v, CACHE)
      new_kv = (cache_k, cache_v)
      k, v = cache_k.astype(cfg.compute_dtype), cache_v.astype(cfg.compute_dtype)
    out = dot_product_attention(q, k, v, read_positions.take(mask, read), cfg.attention_scale(),
                                cfg.attn_logit_softcap)
    out = constrain(out, BLT_HEADS)
    out = nn.DenseGeneral(
        features=cfg.hidden_size, axis=(-2, -1), use_bias=cfg.o_bias, dtype=cfg.compute_dtype,
        param_dtype=cfg.params_dtype, name='o_proj', dot_general=dense_dot.dot_general,
        kernel_init=nn.with_logical_partitioning(init, ('heads', 'kv', 'embed')),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ('embed',)))(out)
    return out, new_kv

  def _fused_qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q [B, T, H, hd], k / v [B, T, K, hd] from one product with the fused [D, H + 2K, hd]
    kernel of `fused_projections.fuse` (decode)."""
    cfg = self.config
    qkv = fused_projections.project(self, x, fused_projections.QKV_KERNEL,
                                    fused_projections.QKV_BIAS, cfg.compute_dtype)
    h, kv = cfg.num_heads, cfg.num_kv_heads
    return qkv[..., :h, :], qkv[..., h:h + kv, :], qkv[..., h + kv:, :]
