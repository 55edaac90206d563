"""`ModelConfig`: one decoder, the family differences (Llama, Mistral, Qwen2/3, Gemma/2, GPT-2) as fields.

The config is a frozen, hashable dataclass so that it (and the `Transformer` that holds it) can
be a static argument of `jax.jit`. Field names follow Hugging Face where one exists, so that
`hf_config.py` maps `config.json` onto it one key at a time.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from deepalign.errors import UserError

FAMILIES = ('llama', 'mistral', 'qwen2', 'qwen3', 'gemma', 'gemma2', 'gpt2')
HEADS = ('lm', 'score', 'value')
DTYPES = ('float32', 'bfloat16')
NORM_TYPES = ('rms', 'layernorm')
POSITION_EMBEDDINGS = ('rope', 'learned')
ROPE_SCALINGS = ('none', 'linear', 'llama3')
MLP_TYPES = ('gated', 'plain')
ACTIVATIONS = ('silu', 'gelu_tanh', 'gelu', 'relu')
LAYER_TYPES = ('full_attention', 'sliding_attention')
# `remat` names: 'none', 'full' (save nothing but each layer's input: today's `remat=True`), or a
# zero-argument policy of `jax.checkpoint_policies` naming what the backward may keep.
REMAT_POLICIES = ('none', 'full', 'dots_saveable', 'dots_with_no_batch_dims_saveable',
                  'checkpoint_dots', 'checkpoint_dots_with_no_batch_dims', 'everything_saveable',
                  'nothing_saveable')


def _remat_name(value: Any) -> str:
  """`remat` as a policy name; the old bool still works (True -> 'full', False -> 'none')."""
  if isinstance(value, bool) or value is None:
    return 'full' if value else 'none'
  if value not in REMAT_POLICIES:
    raise UserError(f'ModelConfig.remat={value!r} is not a remat policy; use one of '
                    f'{REMAT_POLICIES} (or True / False).')
  return value


def _dtype_name(value: Any, field: str) -> str:
  """Accepts 'float32', jnp.float32 or np.dtype and returns the canonical name."""
  try:
    name = jnp.dtype(value).name
  except TypeError:
    name = str(value)
  if name not in DTYPES:
    raise UserError(f'ModelConfig.{field}={value!r} is not supported; use one of {DTYPES}.')
  return name


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a decoder-only transformer and its head.

  Sizes: `vocab_size` V, `hidden_size` D, `num_layers` L, `num_heads` H, `num_kv_heads` K
  (grouped-query attention: H % K == 0), `head_dim` hd (None -> D // H, resolved at
  construction), `intermediate_size` F.
  """
  # Sizes.
  vocab_size: int = 2048
  hidden_size: int = 256
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int | None = None  # None -> num_heads (multi-head attention)
  head_dim: int | None = None  # None -> hidden_size // num_heads
  intermediate_size: int = 688
  max_position_embeddings: int = 2048
  family: str = 'llama'

  # Normalisation.
  norm_type: str = 'rms'  # 'rms' (RMSNorm, scale only) or 'layernorm' (scale + bias, GPT-2)
  norm_eps: float = 1e-6
  norm_scale_plus_one: bool = False  # Gemma: the stored weight w is applied as (1 + w)
  sandwich_norm: bool = False  # Gemma2: post_attn_norm / post_mlp_norm after each sub-block

  # Positions.
  position_embedding: str = 'rope'  # 'rope' or 'learned' (GPT-2: pos_embed table)
  rope_theta: float = 10000.0
  rope_scaling_type: str = 'none'  # 'none', 'linear', 'llama3'
  rope_scaling_factor: float = 1.0
  rope_low_freq_factor: float = 1.0  # llama3 scaling
  rope_high_freq_factor: float = 4.0  # llama3 scaling
  rope_original_max_position_embeddings: int = 8192  # llama3 scaling

  # Attention.
  qkv_bias: bool = False  # Qwen2, GPT-2 (Llama `attention_bias` sets both flags)
  o_bias: bool = False  # GPT-2
  qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k before rope
  query_pre_attn_scalar: float | None = None  # Gemma2: scale = qpas**-0.5 instead of hd**-0.5
  attn_logit_softcap: float | None = None  # Gemma2: cap * tanh(logits / cap)
  final_logit_softcap: float | None = None  # Gemma2
  sliding_window: int | None = None  # window size W: query i sees keys j with i - j < W
  # Per-layer 'full_attention' / 'sliding_attention' (HF `layer_types`). None: every layer is
  # sliding when `sliding_window` is set (Mistral), else every layer is full.
  layer_types: tuple[str, ...] | None = None

  # MLP.
  mlp_type: str = 'gated'  # 'gated' (gate/up/down: SwiGLU, GeGLU) or 'plain' (up/down: GPT-2)
  activation: str = 'silu'  # 'silu', 'gelu_tanh', 'gelu', 'relu'
  mlp_bias: bool = False

  # Embeddings and head.
  tie_word_embeddings: bool = False
  scale_embeddings: bool = False  # Gemma: embeddings * sqrt(D), sqrt taken in the compute dtype
  head: str = 'lm'  # 'lm' -> logits [B,T,V]; 'score' -> [B] at the last real token; 'value' -> [B,T]
  num_labels: int = 1

  # Special tokens.
  pad_id: int | None = 0
  bos_id: int | None = 1
  eos_id: int | None = 2

  # Numerics and memory.
  dtype: str = 'float32'  # compute dtype
  param_dtype: str = 'float32'
  initializer_range: float = 0.02
  # Rematerialise each layer in the backward pass: a name of REMAT_POLICIES (True = 'full').
  remat: str = 'none'
  # One `nn.scan` over the layers (stacked params [L, ...] under params['layers'], logical axis
  # 'layers'): one compiled block instead of L, for big models. Off: params['layers_0'], ...
  scan_layers: bool = False
  # Unscanned and without remat: the last layer's queries, attention, output projection and MLP
  # run only at the positions a caller reads (`read_positions`; the same numbers to float32
  # rounding). Off: every position, the states sliced afterwards (configs/toy_study.py).
  trim_last_layer: bool = True

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_('dtype', _dtype_name(self.dtype, 'dtype'))
    set_('param_dtype', _dtype_name(self.param_dtype, 'param_dtype'))
    set_('remat', _remat_name(self.remat))
    set_('scan_layers', bool(self.scan_layers))
    set_('trim_last_layer', bool(self.trim_last_layer))
    if self.layer_types is not None:
      set_('layer_types', tuple(self.layer_types))
    for name in ('vocab_size', 'hidden_size', 'num_layers', 'num_heads', 'intermediate_size',
                 'max_position_embeddings', 'num_labels'):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f'ModelConfig.{name}={value!r} must be a positive integer.')
    if self.num_kv_heads is None:
      set_('num_kv_heads', self.num_heads)
    if self.num_kv_heads < 1 or self.num_heads % self.num_kv_heads:
      raise UserError(f'ModelConfig.num_heads={self.num_heads} is not divisible by num_kv_heads='
                      f'{self.num_kv_heads}; choose num_kv_heads that divides num_heads.')
    if self.head_dim is None:
      if self.hidden_size % self.num_heads:
        raise UserError(f'ModelConfig.hidden_size={self.hidden_size} is not divisible by num_heads='
                        f'{self.num_heads}; set head_dim explicitly.')
      set_('head_dim', self.hidden_size // self.num_heads)
    if self.head_dim < 1:
      raise UserError(f'ModelConfig.head_dim={self.head_dim} must be a positive integer.')
    if self.position_embedding == 'rope' and self.head_dim % 2:
      raise UserError(f'ModelConfig.head_dim={self.head_dim} must be even for rotary embeddings.')
    choices = {'family': FAMILIES, 'head': HEADS, 'norm_type': NORM_TYPES,
               'position_embedding': POSITION_EMBEDDINGS, 'rope_scaling_type': ROPE_SCALINGS,
               'mlp_type': MLP_TYPES, 'activation': ACTIVATIONS}
    for name, allowed in choices.items():
      if getattr(self, name) not in allowed:
        raise UserError(f'ModelConfig.{name}={getattr(self, name)!r} is not supported; '
                        f'use one of {allowed}.')
    if self.head == 'value' and self.num_labels != 1:
      raise UserError(f'ModelConfig.num_labels={self.num_labels} with head=\'value\'; a value head '
                      'has num_labels=1.')
    if self.layer_types is not None:
      if len(self.layer_types) != self.num_layers:
        raise UserError(f'ModelConfig.layer_types has {len(self.layer_types)} entries but '
                        f'num_layers={self.num_layers}; give one entry per layer.')
      bad = [t for t in self.layer_types if t not in LAYER_TYPES]
      if bad:
        raise UserError(f'ModelConfig.layer_types contains {bad[0]!r}; use {LAYER_TYPES}.')
      if 'sliding_attention' in self.layer_types and not self.sliding_window:
        raise UserError('ModelConfig.layer_types has sliding layers but sliding_window is not set; '
                        'set sliding_window.')
    if self.sliding_window is not None and self.sliding_window < 1:
      raise UserError(f'ModelConfig.sliding_window={self.sliding_window} must be >= 1 or None.')
    for name in ('attn_logit_softcap', 'final_logit_softcap', 'query_pre_attn_scalar'):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise UserError(f'ModelConfig.{name}={value!r} must be positive or None.')
    if self.rope_scaling_type != 'none' and self.rope_scaling_factor <= 0:
      raise UserError(f'ModelConfig.rope_scaling_factor={self.rope_scaling_factor} must be > 0.')
    if self.norm_eps <= 0:
      raise UserError(f'ModelConfig.norm_eps={self.norm_eps} must be > 0.')

  # Derived quantities.

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def is_sliding(self, layer: int) -> bool:
    """Whether layer `layer` uses the sliding-window mask."""
    if self.sliding_window is None:
      return False
    if self.layer_types is None:
      return True
    return self.layer_types[layer] == 'sliding_attention'

  def has_mixed_layers(self) -> bool:
    """Whether sliding and full layers alternate (Gemma-2): a scanned layer picks its mask by flag."""
    return len({self.is_sliding(i) for i in range(self.num_layers)}) > 1

  def attention_scale(self) -> float:
    """Multiplier of q·k: head_dim**-0.5, or query_pre_attn_scalar**-0.5 (Gemma2)."""
    if self.query_pre_attn_scalar is not None:
      return self.query_pre_attn_scalar ** -0.5
    return self.head_dim ** -0.5

  def replace(self, **changes: Any) -> 'ModelConfig':
    """A copy with `changes` applied (re-validated). `head_dim` is re-derived unless given."""
    if 'head_dim' not in changes and ('hidden_size' in changes or 'num_heads' in changes):
      if self.head_dim == self.hidden_size // self.num_heads:
        changes['head_dim'] = None
    return dataclasses.replace(self, **changes)

  @property
  def trims_last_layer(self) -> bool:
    """Whether a forward that reads some positions runs the last layer there only
    (`trim_last_layer`, unscanned, without remat; `read_positions`)."""
    return self.trim_last_layer and not self.scan_layers and self.remat == 'none'

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> 'ModelConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise UserError(f'ModelConfig has no field {unknown[0]!r}; known fields: {sorted(known)}.')
    return cls(**values)

  # Presets.

  @classmethod
  def w_tiny(cls, head: str = 'lm', **overrides: Any) -> 'ModelConfig':
    """The W-tiny benchmark model (/work/shared/W_TINY.md): Llama-style, 4.2M parameters."""
    values = dict(family='llama', vocab_size=2048, hidden_size=256, num_layers=4, num_heads=4,
                  num_kv_heads=4, head_dim=64, intermediate_size=688, max_position_embeddings=256,
                  norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False, head=head,
                  pad_id=0, bos_id=1, eos_id=2)
    values.update(overrides)
    return cls(**values)

  @classmethod
  def tiny(cls, family: str = 'llama', **overrides: Any) -> 'ModelConfig':
    """A few-thousand-parameter model of `family` with every family feature switched on (tests)."""
    base = dict(vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                intermediate_size=48, max_position_embeddings=64, family=family)
    if family in ('llama', 'mistral'):
      base.update(rope_scaling_type='llama3' if family == 'llama' else 'none',
                  rope_scaling_factor=8.0, rope_original_max_position_embeddings=16,
                  sliding_window=None if family == 'llama' else 5, norm_eps=1e-5)
    elif family == 'qwen2':
      base.update(qkv_bias=True, rope_theta=1e6, tie_word_embeddings=True)
    elif family == 'qwen3':
      base.update(qk_norm=True, head_dim=16, rope_theta=1e6)
    elif family == 'gemma':
      base.update(head_dim=16, num_kv_heads=1, norm_scale_plus_one=True, scale_embeddings=True,
                  activation='gelu_tanh', tie_word_embeddings=True)
    elif family == 'gemma2':
      base.update(num_layers=3, head_dim=16, norm_scale_plus_one=True, scale_embeddings=True,
                  activation='gelu_tanh', tie_word_embeddings=True, sandwich_norm=True,
                  attn_logit_softcap=2.0, final_logit_softcap=3.0, query_pre_attn_scalar=24,
                  sliding_window=4,
                  layer_types=('sliding_attention', 'full_attention', 'sliding_attention'))
    elif family == 'gpt2':
      base.update(num_kv_heads=4, norm_type='layernorm', norm_eps=1e-5,
                  position_embedding='learned', mlp_type='plain', activation='gelu_tanh',
                  mlp_bias=True, qkv_bias=True, o_bias=True, tie_word_embeddings=True,
                  intermediate_size=128, pad_id=None, bos_id=63, eos_id=63)
    else:
      raise UserError(f'ModelConfig.tiny(family={family!r}): unknown family; use one of {FAMILIES}.')
    base.update(overrides)
    return cls(**base)

  @classmethod
  def llama3_8b(cls, **overrides: Any) -> 'ModelConfig':
    """Llama-3.1-8B architecture (bf16 weights, llama3 rope scaling, 128k context)."""
    values = dict(family='llama', vocab_size=128256, hidden_size=4096, num_layers=32,
                  num_heads=32, num_kv_heads=8, intermediate_size=14336,
                  max_position_embeddings=131072, norm_eps=1e-5, rope_theta=500000.0,
                  rope_scaling_type='llama3', rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                  rope_high_freq_factor=4.0, rope_original_max_position_embeddings=8192,
                  pad_id=None, bos_id=128000, eos_id=128009, dtype='bfloat16',
                  param_dtype='bfloat16')
    values.update(overrides)
    return cls(**values)

  @classmethod
  def gemma2_2b(cls, **overrides: Any) -> 'ModelConfig':
    """Gemma-2-2B architecture (soft-capping, alternating sliding-window layers, sandwich norms)."""
    values = dict(family='gemma2', vocab_size=256000, hidden_size=2304, num_layers=26,
                  num_heads=8, num_kv_heads=4, head_dim=256, intermediate_size=9216,
                  max_position_embeddings=8192, norm_eps=1e-6, norm_scale_plus_one=True,
                  sandwich_norm=True, scale_embeddings=True, activation='gelu_tanh',
                  tie_word_embeddings=True, attn_logit_softcap=50.0, final_logit_softcap=30.0,
                  query_pre_attn_scalar=256, sliding_window=4096,
                  layer_types=tuple('sliding_attention' if i % 2 == 0 else 'full_attention'
                                    for i in range(26)),
                  pad_id=0, bos_id=2, eos_id=1, dtype='bfloat16', param_dtype='bfloat16')
    values.update(overrides)
    return cls(**values)

  @classmethod
  def qwen2_5_0_5b(cls, **overrides: Any) -> 'ModelConfig':
    """Qwen2.5-0.5B architecture (q/k/v bias, tied embeddings)."""
    values = dict(family='qwen2', vocab_size=151936, hidden_size=896, num_layers=24,
                  num_heads=14, num_kv_heads=2, intermediate_size=4864,
                  max_position_embeddings=32768, norm_eps=1e-6, rope_theta=1000000.0,
                  qkv_bias=True, tie_word_embeddings=True, pad_id=151643, bos_id=None,
                  eos_id=151645, dtype='bfloat16', param_dtype='bfloat16')
    values.update(overrides)
    return cls(**values)

  def num_params(self) -> int:
    """Number of parameters of `Transformer(self)` (matches the initialised tree)."""
    D, hd, H, K, F, V = (self.hidden_size, self.head_dim, self.num_heads, self.num_kv_heads,
                         self.intermediate_size, self.vocab_size)
    norm = D * (2 if self.norm_type == 'layernorm' else 1)
    attn = D * hd * (H + 2 * K) + H * hd * D
    attn += hd * (H + 2 * K) if self.qkv_bias else 0
    attn += D if self.o_bias else 0
    attn += 2 * hd if self.qk_norm else 0
    mlp = D * F * (3 if self.mlp_type == 'gated' else 2)
    mlp += (F * (2 if self.mlp_type == 'gated' else 1) + D) if self.mlp_bias else 0
    layer = attn + mlp + norm * (4 if self.sandwich_norm else 2)
    total = V * D + self.num_layers * layer + norm
    total += self.max_position_embeddings * D if self.position_embedding == 'learned' else 0
    if self.head == 'lm':
      total += 0 if self.tie_word_embeddings else D * V
    else:
      total += D * self.num_labels
    return total

