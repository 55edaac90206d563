"""Hugging Face `config.json` <-> `ModelConfig`.

Reads both spellings transformers has used: 4.x (`rope_theta` + `rope_scaling`, `torch_dtype`)
and 5.x (`rope_parameters`, `dtype`). A key missing from `config.json` takes the default of the
transformers config class of that family, as transformers itself would. `to_hf_config` writes a
dict that transformers 4.x and 5.x both load (both spellings side by side).
"""

from __future__ import annotations

import json
import os
from typing import Any

from deepalign.errors import UserError
from deepalign.models.config import ModelConfig

# architecture -> (family, head)
ARCHITECTURES: dict[str, tuple[str, str]] = {}
_PREFIXES = {'llama': 'Llama', 'mistral': 'Mistral', 'qwen2': 'Qwen2', 'qwen3': 'Qwen3',
             'gemma': 'Gemma', 'gemma2': 'Gemma2'}
for _family, _prefix in _PREFIXES.items():
  ARCHITECTURES[f'{_prefix}ForCausalLM'] = (_family, 'lm')
  ARCHITECTURES[f'{_prefix}ForSequenceClassification'] = (_family, 'score')
ARCHITECTURES['GPT2LMHeadModel'] = ('gpt2', 'lm')
ARCHITECTURES['GPT2ForSequenceClassification'] = ('gpt2', 'score')

ROPE_TYPES = ('default', 'linear', 'llama3')

# transformers activation name -> ModelConfig.activation. gelu_new / gelu_fast /
# gelu_pytorch_tanh are the same tanh approximation written three ways.
_ACTIVATIONS = {'silu': 'silu', 'swish': 'silu', 'gelu_pytorch_tanh': 'gelu_tanh',
                'gelu_new': 'gelu_tanh', 'gelu_fast': 'gelu_tanh', 'gelu_python_tanh': 'gelu_tanh',
                'gelu': 'gelu', 'relu': 'relu'}
_ACTIVATION_TO_HF = {'silu': 'silu', 'gelu_tanh': 'gelu_pytorch_tanh', 'gelu': 'gelu',
                     'relu': 'relu'}

# Defaults of the transformers config classes, for keys a config.json leaves out.
_MAX_POSITIONS = {'llama': 2048, 'mistral': 131072, 'qwen2': 32768, 'qwen3': 32768,
                  'gemma': 8192, 'gemma2': 8192}
_TIED_DEFAULT = {'llama': False, 'mistral': False, 'qwen2': False, 'qwen3': False,
                 'gemma': True, 'gemma2': True, 'gpt2': True}
_HEAD_DIM_DEFAULT = {'gemma': 256, 'gemma2': 256, 'qwen3': 128}
_KV_HEADS_DEFAULT = {'mistral': 8, 'gemma2': 4}
_DTYPES = {'float32': 'float32', 'bfloat16': 'bfloat16',
           # float16 has a narrower range than bfloat16 but more mantissa; float32 holds it
           # exactly, so it is the default that never changes a number (pass dtype= to override).
           'float16': 'float32', 'float': 'float32', 'bf16': 'bfloat16', 'fp32': 'float32'}


def _get(hf: dict[str, Any], key: str, default: Any) -> Any:
  """hf[key], or `default` when the key is absent or null (transformers' class default)."""
  value = hf.get(key, default)
  return default if value is None and default is not None else value


def _require(hf: dict[str, Any], key: str, source: str) -> Any:
  if hf.get(key) is None:
    raise UserError(f'{source}: required key {key!r} is missing; this is not a complete '
                    'transformers config.json.')
  return hf[key]


def architecture_of(hf: dict[str, Any], source: str = 'config.json') -> str:
  """The supported architecture named by `architectures` (or, failing that, `model_type`)."""
  names = hf.get('architectures') or []
  if not names and hf.get('model_type') in _PREFIXES:
    names = [f"{_PREFIXES[hf['model_type']]}ForCausalLM"]
  elif not names and hf.get('model_type') == 'gpt2':
    names = ['GPT2LMHeadModel']
  for name in names:
    if name in ARCHITECTURES:
      return name
  found = names[0] if names else f"model_type={hf.get('model_type')!r}"
  raise UserError(f'{source}: architecture {found} is not supported; supported architectures: '
                  f'{", ".join(sorted(ARCHITECTURES))}.')


def _rope(hf: dict[str, Any], max_positions: int, source: str) -> dict[str, Any]:
  """RoPE fields of ModelConfig from either the 4.x or the 5.x spelling."""
  # transformers 5 gives `rope_scaling` precedence over `rope_parameters` (it converts the
  # former into the latter), so a config carrying both reads the same here.
  params = dict(hf.get('rope_scaling') or hf.get('rope_parameters') or {})
  layer_types = set(hf.get('layer_types') or ())
  nested = [k for k in params if k in layer_types]
  if nested:
    distinct = {json.dumps(params[k], sort_keys=True) for k in nested}
    if len(distinct) > 1:
      raise UserError(f'{source}: rope_parameters differ per layer type ({sorted(nested)}); '
                      'deepalign supports one RoPE for all layers.')
    params = dict(params[nested[0]])
  theta = params.get('rope_theta', hf.get('rope_theta')) or 10000.0
  rope_type = params.get('rope_type', params.get('type', 'default'))
  if rope_type not in ROPE_TYPES:
    raise UserError(f'{source}: rope type {rope_type!r} is not supported; supported rope types: '
                    f'{", ".join(ROPE_TYPES)}.')
  partial = params.get('partial_rotary_factor', hf.get('partial_rotary_factor')) or 1.0
  if partial != 1.0:
    raise UserError(f'{source}: partial_rotary_factor={partial} is not supported; deepalign '
                    'rotates the whole head (partial_rotary_factor=1.0).')
  out: dict[str, Any] = {'rope_theta': float(theta)}
  if rope_type == 'default':
    return out
  out['rope_scaling_type'] = rope_type
  out['rope_scaling_factor'] = float(_require(params, 'factor', f'{source} rope_scaling'))
  if rope_type == 'llama3':
    out['rope_low_freq_factor'] = float(_require(params, 'low_freq_factor', f'{source} rope_scaling'))
    out['rope_high_freq_factor'] = float(_require(params, 'high_freq_factor', f'{source} rope_scaling'))
    # transformers 5 falls back to max_position_embeddings when the key is absent.
    out['rope_original_max_position_embeddings'] = int(
        params.get('original_max_position_embeddings') or max_positions)
  return out


def _activation(name: Any, source: str) -> str:
  if name not in _ACTIVATIONS:
    raise UserError(f'{source}: activation {name!r} is not supported; supported: '
                    f'{", ".join(sorted(_ACTIVATIONS))}.')
  return _ACTIVATIONS[name]


def _dtype(hf: dict[str, Any], source: str) -> str:
  name = hf.get('dtype') or hf.get('torch_dtype') or 'float32'
  name = str(name).replace('torch.', '')
  if name not in _DTYPES:
    raise UserError(f'{source}: dtype {name!r} is not supported; use float32, bfloat16 or float16 '
                    'weights, or convert the checkpoint.')
  return _DTYPES[name]


def _sliding(hf: dict[str, Any], family: str, num_layers: int, source: str) -> dict[str, Any]:
  """`sliding_window` and per-layer `layer_types` in ModelConfig's normal form."""
  if family == 'mistral':
    window = hf.get('sliding_window', 4096)
    types = hf.get('layer_types')
  elif family in ('qwen2', 'qwen3'):
    window = hf.get('sliding_window', 4096) if hf.get('use_sliding_window', False) else None
    types = hf.get('layer_types')
    if types is None and window is not None:
      first = _get(hf, 'max_window_layers', 28)
      types = ['sliding_attention' if i >= first else 'full_attention' for i in range(num_layers)]
  elif family == 'gemma2':
    window = hf.get('sliding_window', 4096)
    types = hf.get('layer_types')
    if types is None:
      # Gemma2 configs from before `layer_types` existed: every `pattern`-th layer is global
      # (pattern 2 = the original alternation, sliding on even layers).
      pattern = hf.get('sliding_window_pattern') or 2
      types = ['sliding_attention' if (i + 1) % pattern else 'full_attention'
               for i in range(num_layers)]
  else:
    return {'sliding_window': None, 'layer_types': None}
  if window is None:
    return {'sliding_window': None, 'layer_types': None}
  if types is None:
    return {'sliding_window': int(window), 'layer_types': None}
  types = tuple(types)
  if len(types) != num_layers:
    raise UserError(f'{source}: layer_types has {len(types)} entries but num_hidden_layers='
                    f'{num_layers}; give one entry per layer.')
  if all(t == 'full_attention' for t in types):
    return {'sliding_window': None, 'layer_types': None}
  if all(t == 'sliding_attention' for t in types):
    return {'sliding_window': int(window), 'layer_types': None}
  return {'sliding_window': int(window), 'layer_types': types}


def _num_labels(hf: dict[str, Any]) -> int:
  # transformers derives num_labels from id2label and does not save the key itself.
  if hf.get('id2label'):
    return len(hf['id2label'])
  return int(hf.get('num_labels') or 2)


def _eos(value: Any) -> int | None:
  # Instruct checkpoints (Llama 3.1) list end-of-text first and end-of-turn last; a chat
  # rollout must stop at end-of-turn.
  if isinstance(value, (list, tuple)):
    return int(value[-1]) if value else None
  return None if value is None else int(value)


def _first(value: Any) -> int | None:
  if isinstance(value, (list, tuple)):
    return int(value[0]) if value else None
  return None if value is None else int(value)


def from_hf_config(hf: dict[str, Any], source: str = 'config.json', dtype: Any = None,
                   param_dtype: Any = None) -> ModelConfig:
  """`ModelConfig` of a transformers `config.json` dict.

  `dtype` / `param_dtype` override the checkpoint's dtype (compute / storage); by default
  both follow it (float16 checkpoints load as float32).
  """
  arch = architecture_of(hf, source)
  family, head = ARCHITECTURES[arch]
  ckpt_dtype = _dtype(hf, source)
  fields: dict[str, Any] = dict(
      family=family, head=head, num_labels=_num_labels(hf) if head == 'score' else 1,
      pad_id=_first(hf.get('pad_token_id')), bos_id=_first(hf.get('bos_token_id')),
      eos_id=_eos(hf.get('eos_token_id')),
      tie_word_embeddings=bool(_get(hf, 'tie_word_embeddings', _TIED_DEFAULT[family])),
      initializer_range=float(_get(hf, 'initializer_range', 0.02)),
      dtype=dtype if dtype is not None else ckpt_dtype,
      param_dtype=param_dtype if param_dtype is not None else ckpt_dtype)
  if family == 'gpt2':
    fields.update(_gpt2_fields(hf, source))
  else:
    fields.update(_decoder_fields(hf, family, source))
  try:
    return ModelConfig(**fields)
  except UserError as e:
    raise UserError(f'{source}: {e}') from None


def _gpt2_fields(hf: dict[str, Any], source: str) -> dict[str, Any]:
  if not _get(hf, 'scale_attn_weights', True) or hf.get('scale_attn_by_inverse_layer_idx'):
    raise UserError(f'{source}: GPT-2 with scale_attn_weights=false or scale_attn_by_inverse_'
                    'layer_idx=true is not supported; only the standard 1/sqrt(head_dim) scale is.')
  hidden = int(hf.get('n_embd') or _require(hf, 'hidden_size', source))
  heads = int(hf.get('n_head') or _require(hf, 'num_attention_heads', source))
  return dict(
      vocab_size=int(_get(hf, 'vocab_size', 50257)), hidden_size=hidden,
      num_layers=int(hf.get('n_layer') or _require(hf, 'num_hidden_layers', source)),
      num_heads=heads, num_kv_heads=heads, head_dim=None,
      intermediate_size=int(hf.get('n_inner') or 4 * hidden),
      max_position_embeddings=int(_get(hf, 'n_positions', 1024)),
      norm_type='layernorm', norm_eps=float(_get(hf, 'layer_norm_epsilon', 1e-5)),
      position_embedding='learned', mlp_type='plain',
      activation=_activation(_get(hf, 'activation_function', 'gelu_new'), source),
      mlp_bias=True, qkv_bias=True, o_bias=True)


def _decoder_fields(hf: dict[str, Any], family: str, source: str) -> dict[str, Any]:
  heads = int(_require(hf, 'num_attention_heads', source))
  num_layers = int(_require(hf, 'num_hidden_layers', source))
  hidden = int(_require(hf, 'hidden_size', source))
  kv_heads = hf.get('num_key_value_heads', _KV_HEADS_DEFAULT.get(family, heads)) or heads
  head_dim = hf.get('head_dim', _HEAD_DIM_DEFAULT.get(family)) or hidden // heads
  max_positions = int(_get(hf, 'max_position_embeddings', _MAX_POSITIONS[family]))
  if family == 'gemma2':
    act = _get(hf, 'hidden_activation', None) or hf.get('hidden_act') or 'gelu_pytorch_tanh'
  elif family == 'gemma':
    # Gemma's released configs say "gelu" but mean the tanh approximation (transformers
    # rewrites it the same way); `hidden_activation` is the 4.x spelling that wins if set.
    act = hf.get('hidden_activation') or hf.get('hidden_act') or 'gelu_pytorch_tanh'
    act = 'gelu_pytorch_tanh' if act == 'gelu' else act
  else:
    act = _get(hf, 'hidden_act', 'silu')
  attention_bias = bool(hf.get('attention_bias', False))
  fields: dict[str, Any] = dict(
      vocab_size=int(_require(hf, 'vocab_size', source)), hidden_size=hidden,
      num_layers=num_layers, num_heads=heads, num_kv_heads=int(kv_heads), head_dim=int(head_dim),
      intermediate_size=int(_require(hf, 'intermediate_size', source)),
      max_position_embeddings=max_positions,
      norm_eps=float(_get(hf, 'rms_norm_eps', 1e-6)), activation=_activation(act, source),
      qkv_bias=family == 'qwen2' or (family != 'mistral' and attention_bias),
      o_bias=family not in ('qwen2', 'mistral') and attention_bias,
      mlp_bias=family == 'llama' and bool(hf.get('mlp_bias', False)),
      qk_norm=family == 'qwen3', **_rope(hf, max_positions, source),
      **_sliding(hf, family, num_layers, source))
  if family in ('gemma', 'gemma2'):
    fields.update(norm_scale_plus_one=True, scale_embeddings=True)
  if family == 'gemma2':
    fields.update(
        sandwich_norm=True,
        query_pre_attn_scalar=float(_get(hf, 'query_pre_attn_scalar', 256)),
        attn_logit_softcap=hf.get('attn_logit_softcapping', 50.0),
        final_logit_softcap=hf.get('final_logit_softcapping', 30.0))
  return fields


def load_hf_config(path: str | os.PathLike, dtype: Any = None, param_dtype: Any = None) -> ModelConfig:
  """Reads `path` (a checkpoint directory or its config.json) into a `ModelConfig`."""
  path = os.fspath(path)
  file = os.path.join(path, 'config.json') if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise UserError(f'{file}: no config.json; point at a local Hugging Face checkpoint directory '
                    '(get one with `huggingface-cli download REPO --local-dir DIR`).')
  try:
    with open(file) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f'{file}: not valid JSON ({e}); re-download or re-save the checkpoint.') from None
  if not isinstance(hf, dict):
    raise UserError(f'{file}: expected a JSON object; this is not a transformers config.json.')
  return from_hf_config(hf, source=file, dtype=dtype, param_dtype=param_dtype)


def hf_architecture(cfg: ModelConfig) -> str:
  """The transformers class name that holds `cfg` (a value head saves as a classifier)."""
  suffix = 'ForCausalLM' if cfg.head == 'lm' else 'ForSequenceClassification'
  if cfg.family == 'gpt2':
    return 'GPT2LMHeadModel' if cfg.head == 'lm' else 'GPT2ForSequenceClassification'
  return _PREFIXES[cfg.family] + suffix


def to_hf_config(cfg: ModelConfig) -> dict[str, Any]:
  """A transformers `config.json` dict for `cfg` (loads in transformers 4.x and 5.x).

  Raises UserError when `cfg` uses a feature the transformers class of its family lacks
  (e.g. a sliding window on Llama): such a checkpoint would load there silently wrong.
  """
  hf: dict[str, Any] = {
      'architectures': [hf_architecture(cfg)], 'model_type': cfg.family,
      'vocab_size': cfg.vocab_size, 'tie_word_embeddings': cfg.tie_word_embeddings,
      'pad_token_id': cfg.pad_id, 'bos_token_id': cfg.bos_id, 'eos_token_id': cfg.eos_id,
      'initializer_range': cfg.initializer_range,
      'dtype': cfg.param_dtype, 'torch_dtype': cfg.param_dtype,
  }
  if cfg.head != 'lm':
    hf['id2label'] = {str(i): f'LABEL_{i}' for i in range(cfg.num_labels)}
    hf['label2id'] = {f'LABEL_{i}': i for i in range(cfg.num_labels)}
  if cfg.family == 'gpt2':
    hf.update(n_embd=cfg.hidden_size, n_layer=cfg.num_layers, n_head=cfg.num_heads,
              n_inner=cfg.intermediate_size, n_positions=cfg.max_position_embeddings,
              layer_norm_epsilon=cfg.norm_eps,
              activation_function='gelu_new' if cfg.activation == 'gelu_tanh'
              else _ACTIVATION_TO_HF[cfg.activation],
              scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
              reorder_and_upcast_attn=False)
  else:
    hf.update(hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
              head_dim=cfg.head_dim, intermediate_size=cfg.intermediate_size,
              max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=cfg.norm_eps)
    act = _ACTIVATION_TO_HF[cfg.activation]
    hf['hidden_activation' if cfg.family == 'gemma2' else 'hidden_act'] = act
    if cfg.family in ('llama', 'qwen3', 'gemma', 'gemma2'):
      hf['attention_bias'] = cfg.qkv_bias
    if cfg.family == 'llama':
      hf['mlp_bias'] = cfg.mlp_bias
    hf.update(_rope_to_hf(cfg))
    hf.update(_sliding_to_hf(cfg))
    if cfg.family == 'gemma2':
      hf.update(query_pre_attn_scalar=cfg.query_pre_attn_scalar,
                attn_logit_softcapping=cfg.attn_logit_softcap,
                final_logit_softcapping=cfg.final_logit_softcap)
  _check_expressible(cfg, hf)
  return hf


def _rope_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  scaling: dict[str, Any] | None = None
  if cfg.rope_scaling_type != 'none':
    scaling = {'rope_type': cfg.rope_scaling_type, 'factor': cfg.rope_scaling_factor}
    if cfg.rope_scaling_type == 'llama3':
      scaling.update(low_freq_factor=cfg.rope_low_freq_factor,
                     high_freq_factor=cfg.rope_high_freq_factor,
                     original_max_position_embeddings=cfg.rope_original_max_position_embeddings)
  params = {'rope_type': 'default', 'rope_theta': cfg.rope_theta}
  if scaling:
    params = {**scaling, 'rope_theta': cfg.rope_theta}
  # 4.x reads rope_theta + rope_scaling, 5.x rope_parameters (and prefers rope_scaling).
  return {'rope_theta': cfg.rope_theta, 'rope_scaling': scaling, 'rope_parameters': params}


def _sliding_to_hf(cfg: ModelConfig) -> dict[str, Any]:
  types = list(cfg.layer_types) if cfg.layer_types else [
      'sliding_attention' if cfg.sliding_window else 'full_attention'] * cfg.num_layers
  if cfg.family == 'mistral':
    return {'sliding_window': cfg.sliding_window}
  if cfg.family in ('qwen2', 'qwen3'):
    # transformers before `layer_types` made layers >= max_window_layers sliding.
    first = types.index('sliding_attention') if 'sliding_attention' in types else cfg.num_layers
    return {'use_sliding_window': cfg.sliding_window is not None,
            'sliding_window': cfg.sliding_window, 'layer_types': types,
            'max_window_layers': first}
  if cfg.family == 'gemma2':
    return {'sliding_window': cfg.sliding_window, 'layer_types': types}
  return {}


# Fields that do not describe the function the checkpoint computes.
_NOT_ARCHITECTURE = ('dtype', 'param_dtype', 'remat', 'scan_layers', 'trim_last_layer',
                     'initializer_range', 'head')


def _check_expressible(cfg: ModelConfig, hf: dict[str, Any]) -> None:
  back = from_hf_config(hf, source='to_hf_config', dtype=cfg.dtype, param_dtype=cfg.param_dtype)
  want, got = cfg.to_dict(), back.to_dict()
  ignore = set(_NOT_ARCHITECTURE)
  if cfg.position_embedding != 'rope':
    ignore |= {name for name in want if name.startswith('rope_')}
  elif cfg.rope_scaling_type != 'llama3':
    ignore |= {'rope_low_freq_factor', 'rope_high_freq_factor',
               'rope_original_max_position_embeddings'}
    if cfg.rope_scaling_type == 'none':
      ignore.add('rope_scaling_factor')
  for name in want:
    if name in ignore or want[name] == got[name] or _same_number(want[name], got[name]):
      continue
    raise UserError(f'ModelConfig.{name}={want[name]!r} cannot be expressed as a transformers '
                    f'{hf["architectures"][0]} config (it would load as {got[name]!r}); '
                    'use a family that has this feature or drop it before save_pretrained.')


def _same_number(a: Any, b: Any) -> bool:
  return isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)
