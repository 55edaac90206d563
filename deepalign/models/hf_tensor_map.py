"""Which Hugging Face tensor is which leaf of our parameter tree, and how its layout differs.

One `TensorLink` per HF tensor. transformers' `nn.Linear` stores `[out, in]`; our kernels are
`[in, out]` with attention split per head (CONTRACTS.md), so most links transpose and
reshape. GPT-2's `Conv1D` is already `[in, out]`, and its fused `c_attn` feeds three leaves
(q, k, v). All transforms are pure numpy and exact (no arithmetic), so a round trip is bit-exact.

Sharded loading reads parts of tensors: `TensorLink.read_block(read, part, index)` returns the
block `index` (one concrete slice per flax dimension) of flax leaf `part`, reading from the HF
tensor only the rows / columns that block needs (`read(hf_index)` slices the file). Dimensions
our layout splits out of one HF dimension (heads x head_dim) map to one contiguous range of it.

Scanned models (`ModelConfig.scan_layers`) hold layer i's leaves at index i of a stacked leaf
under 'layers'; the links keep naming per-layer paths ('layers_i', ...) and `stacked_path`
says where such a path lives in a scanned tree.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import numpy as np

from deepalign.models.config import ModelConfig

Path = tuple[str, ...]
Index = tuple[slice, ...]  # concrete: start and stop set, step 1
# read(hf_index) -> that block of the HF tensor
Reader = Callable[[Index], np.ndarray]


@dataclasses.dataclass(frozen=True)
class TensorLink:
  """One HF tensor <-> one or more flax leaves.

  `to_flax(hf_array) -> tuple of arrays` (one per path); `to_hf(tuple of arrays) -> hf_array`;
  `read_block(read, part, index) -> array`: block `index` of leaf `paths[part]` (see module doc).
  """
  hf_name: str
  hf_shape: tuple[int, ...]
  paths: tuple[Path, ...]
  to_flax: Callable[[np.ndarray], tuple[np.ndarray, ...]]
  to_hf: Callable[[tuple[np.ndarray, ...]], np.ndarray]
  read_block: Callable[[Reader, int, Index], np.ndarray] | None = None
  shapes: tuple[tuple[int, ...], ...] | None = None  # of the flax leaves, one per path

  def read(self, read: Reader, part: int, index: Index) -> np.ndarray:
    """Block `index` of leaf `part`; links without a slicer read the whole tensor and cut."""
    if self.read_block is not None:
      return self.read_block(read, part, index)
    return self.to_flax(read(tuple(slice(0, n) for n in self.hf_shape)))[part][index]


def _merged(index: Index, dims: tuple[int, ...]) -> tuple[slice, Index]:
  """Flax dims `dims` (row-major) that are one HF dim: the HF range covering block `index`
  (whole inner dims over the outer dim's range) and what to cut from it after the reshape."""
  inner = int(np.prod(dims[1:]))
  outer = index[0]
  return slice(outer.start * inner, outer.stop * inner), (slice(None),) + tuple(index[1:])


def _n(s: slice) -> int:
  return s.stop - s.start


def _same(name: str, path: Path, shape: tuple[int, ...]) -> TensorLink:
  return TensorLink(name, shape, (path,), lambda a: (a,), lambda t: t[0],
                    lambda read, part, index: read(index), (tuple(shape),))


def _linear(name: str, path: Path, d_in: int, out_shape: tuple[int, ...]) -> TensorLink:
  """nn.Linear weight [prod(out_shape), d_in] <-> kernel [d_in, *out_shape]."""
  n_out = int(np.prod(out_shape))

  def read_block(read: Reader, part: int, index: Index) -> np.ndarray:
    rows, cut = _merged(index[1:], out_shape)
    a = read((rows, index[0])).T
    return np.ascontiguousarray(a.reshape((_n(index[0]), _n(index[1])) + out_shape[1:])[
        (slice(None),) + cut])
  return TensorLink(
      name, (n_out, d_in), (path,),
      lambda a: (np.ascontiguousarray(a.T).reshape((d_in,) + out_shape),),
      lambda t: np.ascontiguousarray(t[0].reshape(d_in, n_out).T), read_block,
      ((d_in,) + tuple(out_shape),))


def _linear_in_heads(name: str, path: Path, in_shape: tuple[int, ...], d_out: int) -> TensorLink:
  """nn.Linear weight [d_out, prod(in_shape)] <-> kernel [*in_shape, d_out] (o_proj)."""
  n_in = int(np.prod(in_shape))
  k = len(in_shape)

  def read_block(read: Reader, part: int, index: Index) -> np.ndarray:
    cols, cut = _merged(index[:k], in_shape)
    a = read((index[k], cols)).T
    return np.ascontiguousarray(a.reshape((_n(index[0]),) + in_shape[1:] + (_n(index[k]),))[
        cut + (slice(None),)])
  return TensorLink(
      name, (d_out, n_in), (path,),
      lambda a: (np.ascontiguousarray(a.T).reshape(in_shape + (d_out,)),),
      lambda t: np.ascontiguousarray(t[0].reshape(n_in, d_out).T), read_block,
      (tuple(in_shape) + (d_out,),))


def _reshaped(name: str, path: Path, hf_shape: tuple[int, ...], shape: tuple[int, ...]) -> TensorLink:
  """A plain reshape (biases per head, GPT-2 Conv1D c_proj): shape[:k] is hf_shape[0]."""
  k = len(shape) - len(hf_shape) + 1
  assert int(np.prod(shape[:k])) == hf_shape[0] and tuple(shape[k:]) == tuple(hf_shape[1:])

  def read_block(read: Reader, part: int, index: Index) -> np.ndarray:
    rows, cut = _merged(index[:k], shape[:k])
    a = read((rows,) + tuple(index[k:]))
    return a.reshape((_n(index[0]),) + shape[1:k] + a.shape[1:])[cut + (slice(None),) * (len(shape) - k)]
  return TensorLink(name, hf_shape, (path,), lambda a: (a.reshape(shape),),
                    lambda t: t[0].reshape(hf_shape), read_block, (tuple(shape),))


def _split(name: str, paths: tuple[Path, ...], hf_shape: tuple[int, ...], axis: int,
           shapes: tuple[tuple[int, ...], ...]) -> TensorLink:
  """One HF tensor cut along `axis` into equal parts, each reshaped (GPT-2 c_attn)."""
  def to_flax(a: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.ascontiguousarray(p).reshape(s)
                 for p, s in zip(np.split(a, len(paths), axis=axis), shapes))

  def to_hf(t: tuple[np.ndarray, ...]) -> np.ndarray:
    parts = [x.reshape(hf_shape[:axis] + (-1,) + hf_shape[axis + 1:]) for x in t]
    return np.concatenate(parts, axis=axis)

  read_block = None
  if axis == len(hf_shape) - 1:  # GPT-2's c_attn: the parts are ranges of the last HF dim
    size = hf_shape[axis] // len(paths)

    def read_block(read: Reader, part: int, index: Index) -> np.ndarray:
      merged = shapes[part][axis:]
      cols, cut = _merged(index[axis:], merged)
      cols = slice(cols.start + part * size, cols.stop + part * size)
      a = read(tuple(index[:axis]) + (cols,))
      a = a.reshape(a.shape[:axis] + (_n(index[axis]),) + merged[1:])
      return a[(slice(None),) * axis + cut]
  return TensorLink(name, hf_shape, paths, to_flax, to_hf, read_block,
                    tuple(tuple(x) for x in shapes))


def stacked_path(path: Path) -> tuple[Path, int | None]:
  """Where per-layer `path` ('layers_i', ...) lives in a scanned tree: (('layers', ...), i);
  other paths are unchanged, with layer None."""
  m = re.fullmatch(r'layers_(\d+)', path[0])
  if m is None:
    return path, None
  return ('layers',) + tuple(path[1:]), int(m.group(1))


def body_prefix(cfg: ModelConfig) -> str:
  """Prefix of the backbone's tensors in a *ForCausalLM / *ForSequenceClassification file."""
  return 'transformer.' if cfg.family == 'gpt2' else 'model.'


def tensor_links(cfg: ModelConfig) -> list[TensorLink]:
  """Every tensor a transformers checkpoint of `cfg` holds (with the backbone prefix)."""
  links = _gpt2_links(cfg) if cfg.family == 'gpt2' else _decoder_links(cfg)
  D = cfg.hidden_size
  if cfg.head == 'lm' and not cfg.tie_word_embeddings:
    links.append(_linear('lm_head.weight', ('lm_head', 'kernel'), D, (cfg.vocab_size,)))
  if cfg.head in ('score', 'value'):
    links.append(_linear('score.weight', ('score', 'kernel'), D, (cfg.num_labels,)))
  return links


def _decoder_links(cfg: ModelConfig) -> list[TensorLink]:
  D, H, K, hd, F = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                    cfg.intermediate_size)
  p = 'model.'
  links = [_same(f'{p}embed_tokens.weight', ('embed', 'embedding'), (cfg.vocab_size, D)),
           _same(f'{p}norm.weight', ('final_norm', 'scale'), (D,))]
  for i in range(cfg.num_layers):
    hf, fl = f'{p}layers.{i}.', f'layers_{i}'
    links.append(_same(f'{hf}input_layernorm.weight', (fl, 'input_norm', 'scale'), (D,)))
    if cfg.sandwich_norm:
      # Gemma2 names its four norms by position; the second is AFTER attention.
      links += [
          _same(f'{hf}post_attention_layernorm.weight', (fl, 'post_attn_norm', 'scale'), (D,)),
          _same(f'{hf}pre_feedforward_layernorm.weight', (fl, 'pre_mlp_norm', 'scale'), (D,)),
          _same(f'{hf}post_feedforward_layernorm.weight', (fl, 'post_mlp_norm', 'scale'), (D,))]
    else:
      # Llama's "post_attention_layernorm" is the norm in front of the MLP.
      links.append(_same(f'{hf}post_attention_layernorm.weight', (fl, 'pre_mlp_norm', 'scale'), (D,)))
    for proj, heads in (('q_proj', H), ('k_proj', K), ('v_proj', K)):
      path = (fl, 'attn', proj)
      links.append(_linear(f'{hf}self_attn.{proj}.weight', path + ('kernel',), D, (heads, hd)))
      if cfg.qkv_bias:
        links.append(_reshaped(f'{hf}self_attn.{proj}.bias', path + ('bias',), (heads * hd,), (heads, hd)))
    links.append(_linear_in_heads(f'{hf}self_attn.o_proj.weight', (fl, 'attn', 'o_proj', 'kernel'),
                                  (H, hd), D))
    if cfg.o_bias:
      links.append(_same(f'{hf}self_attn.o_proj.bias', (fl, 'attn', 'o_proj', 'bias'), (D,)))
    if cfg.qk_norm:
      links += [_same(f'{hf}self_attn.q_norm.weight', (fl, 'attn', 'q_norm', 'scale'), (hd,)),
                _same(f'{hf}self_attn.k_norm.weight', (fl, 'attn', 'k_norm', 'scale'), (hd,))]
    for proj, d_in, d_out in (('gate_proj', D, F), ('up_proj', D, F), ('down_proj', F, D)):
      path = (fl, 'mlp', proj)
      links.append(_linear(f'{hf}mlp.{proj}.weight', path + ('kernel',), d_in, (d_out,)))
      if cfg.mlp_bias:
        links.append(_same(f'{hf}mlp.{proj}.bias', path + ('bias',), (d_out,)))
  return links


def _gpt2_links(cfg: ModelConfig) -> list[TensorLink]:
  D, H, hd, F = cfg.hidden_size, cfg.num_heads, cfg.head_dim, cfg.intermediate_size
  p = 'transformer.'
  links = [_same(f'{p}wte.weight', ('embed', 'embedding'), (cfg.vocab_size, D)),
           _same(f'{p}wpe.weight', ('pos_embed', 'embedding'), (cfg.max_position_embeddings, D)),
           _same(f'{p}ln_f.weight', ('final_norm', 'scale'), (D,)),
           _same(f'{p}ln_f.bias', ('final_norm', 'bias'), (D,))]
  for i in range(cfg.num_layers):
    hf, fl = f'{p}h.{i}.', f'layers_{i}'
    for ln, norm in (('ln_1', 'input_norm'), ('ln_2', 'pre_mlp_norm')):
      links += [_same(f'{hf}{ln}.weight', (fl, norm, 'scale'), (D,)),
                _same(f'{hf}{ln}.bias', (fl, norm, 'bias'), (D,))]
    qkv = tuple((fl, 'attn', n) for n in ('q_proj', 'k_proj', 'v_proj'))
    links += [
        _split(f'{hf}attn.c_attn.weight', tuple(x + ('kernel',) for x in qkv), (D, 3 * H * hd),
               1, ((D, H, hd),) * 3),
        _split(f'{hf}attn.c_attn.bias', tuple(x + ('bias',) for x in qkv), (3 * H * hd,),
               0, ((H, hd),) * 3),
        _reshaped(f'{hf}attn.c_proj.weight', (fl, 'attn', 'o_proj', 'kernel'), (H * hd, D), (H, hd, D)),
        _same(f'{hf}attn.c_proj.bias', (fl, 'attn', 'o_proj', 'bias'), (D,)),
        _same(f'{hf}mlp.c_fc.weight', (fl, 'mlp', 'up_proj', 'kernel'), (D, F)),
        _same(f'{hf}mlp.c_fc.bias', (fl, 'mlp', 'up_proj', 'bias'), (F,)),
        _same(f'{hf}mlp.c_proj.weight', (fl, 'mlp', 'down_proj', 'kernel'), (F, D)),
        _same(f'{hf}mlp.c_proj.bias', (fl, 'mlp', 'down_proj', 'bias'), (D,))]
  return links


# Buffers some checkpoints carry that are not parameters (transformers skips them too):
# GPT-2's causal-mask tables and old rotary `inv_freq` caches.
_IGNORED = re.compile(r'(^|\.)h\.\d+\.attn\.(masked_)?bias$|rotary_emb\.inv_freq$')


def is_ignored_buffer(name: str) -> bool:
  return bool(_IGNORED.search(name))


def tied_head_name(cfg: ModelConfig) -> str | None:
  """`lm_head.weight` when tied: transformers ignores it on load, so do we."""
  return 'lm_head.weight' if cfg.head == 'lm' and cfg.tie_word_embeddings else None
